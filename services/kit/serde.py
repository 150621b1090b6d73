"""Avro serde for topic keys and values: Confluent wire format, ids from the schema registry.

Every key and value on an Entrain topic is::

    00 | 4-byte big-endian schema id | Avro binary body

the framing every Confluent-compatible client reads (confluent-kafka's ``AvroDeserializer``,
Kafka Connect, ksqlDB, Flink, kcat -s avro): with only the registry URL, a stock client decodes
our topics. Subjects follow the TopicNameStrategy (``<topic>-key``, ``<topic>-value``);
``python -m kit.topics`` registers every committed version under them, in order, and sets
their compatibility from the manifest. Producers never register: a schema that ``make topics``
did not register is an error, not a silent new version.

Why the kit frames the bytes itself instead of calling confluent-kafka's ``AvroSerializer``:
the serializer re-validates and converts each record and resolves the subject per call, and
encodes with fastavro, whose C path takes 6-9 µs for one telemetry record here (unions and
enums are its slow cases; cavro, Cython, takes 3). The kit encodes with its own extension,
``native/entrain_avro`` (Rust): ``_plan`` turns the parsed schema into a plan (names resolved,
defaults already encoded) and the extension walks each value along it, 0.56-0.61 µs a record with the framing
(``make bench-kafka`` prints all three). It is stricter than fastavro: a float or ``True`` for
a long, ``None`` or 1 for a boolean, are errors that name the field, where fastavro writes them.
The bytes are the same Avro binary (tests/integration/test_schema_registry.py checks them
against ``AvroSerializer``'s, and that ``AvroDeserializer`` reads ours; tests/unit/test_serde.py
checks every committed example and generated records of every schema against fastavro).
Decoding stays on fastavro: schema resolution between versions, as confluent-kafka's own
deserializer does it.

Decoding accepts only ids that are versions of the topic's own subject (the list is asked of
the registry once, and again for an id not on it, at most every ``SUBJECT_REFRESH_S``: a writer
cannot make a consumer fetch arbitrary ids, nor decode under another topic's schema). The writer
schema is taken by id (once per id; ids never change) and resolved to the reader's own latest
committed version, so records written by an older producer decode after a BACKWARD-compatible
change. Another id, or bytes without the framing, are a DecodeError (bad data: dead-lettered);
a registry that cannot be reached is RegistryUnavailable (an outage: not dead-lettered).
"""

from __future__ import annotations

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import entrain_avro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro import parse_schema, schemaless_reader
from fastavro.schema import to_parsing_canonical_form

from kit.contracts import SchemaSide, TopicContract, contract
from kit.settings import KafkaSettings, RegistrySettings

MAGIC = b"\x00"
HEADER_LENGTH = 5
SUBJECT_REFRESH_S = 2.0  # an id not among the subject's versions asks the registry again at most this often


class DecodeError(ValueError):
    """Bytes on a topic could not be decoded with any version of the topic's schema."""


class EncodeError(ValueError):
    """A record does not fit its topic's schema (a bug in the producing code)."""


class RegistryUnavailable(RuntimeError):
    """The schema registry could not be asked (down, unreachable, refusing our credentials)."""


class SchemaNotRegistered(RuntimeError):
    """Our committed schema is not registered under its subject: run ``make topics``."""


def _plain(schema: Any) -> Any:
    """The schema without logicalType annotations.

    Timestamps stay epoch milliseconds (``int``) in Python, as on the wire: no datetime objects
    are built per record. The registered schema keeps them (stock clients see timestamps).
    """
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def _plan(schema: Any, named: dict[str, tuple[Any, ...]] | None = None, namespace: str = "") -> tuple[Any, ...]:
    """The encoder's plan of a (logicalType-free) schema: nested tuples with names resolved and
    each field's default already encoded (a union's default is of its first branch)."""
    named = {} if named is None else named
    if isinstance(schema, list):
        branches = tuple(_plan(branch, named, namespace) for branch in schema)
        kinds = [b[0] for b in branches]
        # The encoder takes the first branch a value fits; fastavro prefers double to float and
        # weighs records by their fields. Unions where the two could disagree are refused.
        if {"float", "double"} <= set(kinds) or kinds.count("record") > 1 or {"record", "map"} <= set(kinds):
            raise ValueError(f"union {kinds} is ambiguous for the encoder (float with double, two records, "
                             "or a record with a map)")
        return ("union", branches)
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return (schema,)
        full = schema if "." in schema or not namespace else f"{namespace}.{schema}"
        if full not in named and schema not in named:
            raise ValueError(f"unknown or recursive type {schema!r}")
        return named.get(full) or named[schema]
    kind = schema["type"]
    if kind in PRIMITIVES:
        return (kind,)
    if kind == "array":
        return ("array", _plan(schema["items"], named, namespace))
    if kind == "map":
        return ("map", _plan(schema["values"], named, namespace))
    name = schema["name"]  # a dotted name carries its namespace; else the attribute, else the enclosing one
    space = name.rpartition(".")[0] if "." in name else (schema.get("namespace", namespace) or "")
    full = name if "." in name else (f"{space}.{name}" if space else name)
    if kind == "enum":
        plan: tuple[Any, ...] = ("enum", full, list(schema["symbols"]))
    elif kind == "fixed":
        plan = ("fixed", int(schema["size"]))
    elif kind == "record" or kind == "error":
        fields = []
        for f in schema["fields"]:
            node = _plan(f["type"], named, space)
            default = None
            if "default" in f:  # a union's default is of its first branch; bytes and fixed are JSON strings
                first = ("union", node[1][:1]) if node[0] == "union" else node
                kind_of_first = first[1][0][0] if first[0] == "union" else first[0]
                value = f["default"]
                if kind_of_first in ("bytes", "fixed") and isinstance(value, str):
                    value = value.encode("latin-1")
                try:
                    default = entrain_avro.Encoder(first).encode(value)
                except ValueError as exc:
                    raise ValueError(f"{full}.{f['name']}: the default {value!r} does not fit: {exc}") from None
            fields.append((f["name"], node, default))
        plan = ("record", full, tuple(fields))
    else:
        raise ValueError(f"unknown Avro type {kind!r}")
    named[full] = plan
    return plan


def subject(physical_topic: str, role: str) -> str:
    """The TopicNameStrategy subject of a topic's key or value."""
    return f"{physical_topic}-{role}"


class SchemaIds:
    """The registry, as the serde needs it: our schema's id under a subject, a schema by id.
    Answers are cached for the process's lifetime (a registered id never changes meaning)."""

    def __init__(self, client: SchemaRegistryClient) -> None:
        self.client = client
        self._ids: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def id_of(self, subject_name: str, schema_str: str) -> int:
        key = (subject_name, schema_str)
        found: Any = self._ids.get(key)
        if found is None:
            try:
                found = self.client.lookup_schema(subject_name, Schema(schema_str, "AVRO")).schema_id
            except SchemaRegistryError as exc:
                if exc.http_status_code == 404:
                    raise SchemaNotRegistered(f"{subject_name}: our schema is not registered "
                                              f"(run `make topics`): {exc.error_message}") from None
                raise RegistryUnavailable(f"{subject_name}: registry refused the lookup: {exc}") from exc
            except Exception as exc:  # httpx transport errors, timeouts
                raise RegistryUnavailable(f"{subject_name}: registry unreachable: {exc}") from exc
            with self._lock:
                self._ids[key] = int(found)
        return int(found)

    def subject_ids(self, subject_name: str) -> set[int]:
        """The ids of every version registered under a subject (empty if there is none)."""
        try:
            versions = self.client.get_versions(subject_name)
            return {int(self.client.get_version(subject_name, v).schema_id or 0) for v in versions}
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return set()
            raise RegistryUnavailable(f"{subject_name}: registry refused the lookup: {exc}") from exc
        except Exception as exc:  # httpx transport errors, timeouts
            raise RegistryUnavailable(f"{subject_name}: registry unreachable: {exc}") from exc

    def schema_of(self, schema_id: int) -> str | None:
        """The schema registered under an id; None if the registry does not know the id."""
        try:
            return str(self.client.get_schema(schema_id).schema_str)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return None
            raise RegistryUnavailable(f"schema id {schema_id}: registry refused the lookup: {exc}") from exc
        except Exception as exc:
            raise RegistryUnavailable(f"schema id {schema_id}: registry unreachable: {exc}") from exc


@cache
def schema_ids(settings: RegistrySettings) -> SchemaIds:
    """One registry client per registry, shared by every serde of the process."""
    return SchemaIds(SchemaRegistryClient.new_client(settings.client_config()))  # mock:// in unit tests


@dataclass
class SideCodec:
    """Encoder/decoder for one side (key or value) of one topic."""

    label: str
    subject: str
    writer_str: str  # the latest committed version, as registered
    writer: Any  # fastavro parsed schema of that version (decoding)
    encoder: entrain_avro.Encoder  # the same version, for encoding
    field_names: tuple[str, ...]  # its top-level fields, in order
    registry: SchemaIds
    _header: bytes | None = None
    _readers: dict[int, tuple[Any, bool]] = field(default_factory=dict)  # id -> (writer, needs resolution)
    _subject_ids: set[int] = field(default_factory=set)  # versions of our subject, as last asked
    _asked_at: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)  # one refresh at a time; others wait for it

    @classmethod
    def build(cls, topic_name: str, physical_topic: str, side: SchemaSide, registry: SchemaIds) -> SideCodec:
        latest = side.schema()
        return cls(label=f"{topic_name} {side.role}", subject=subject(physical_topic, side.role),
                   writer_str=side.schema_str(), writer=parse_schema(_plain(latest)),
                   encoder=entrain_avro.Encoder(_plan(_plain(latest))),
                   field_names=tuple(f["name"] for f in latest.get("fields", ())), registry=registry)

    @property
    def header(self) -> bytes:
        """Magic byte and our schema's id (asked of the registry once)."""
        if self._header is None:
            self._header = MAGIC + self.registry.id_of(self.subject, self.writer_str).to_bytes(4, "big")
        return self._header

    def encode(self, record: dict[str, Any]) -> bytes:
        try:  # ValueError names the field and what it expected
            return self.encoder.encode(record, self._header or self.header)
        except ValueError as exc:
            raise EncodeError(f"{self.label} record does not fit its schema: {exc}") from exc

    def _writer_of(self, schema_id: int) -> tuple[Any, bool]:
        known = self._readers.get(schema_id)
        if known is None:
            with self._lock:
                if schema_id not in self._subject_ids and time.monotonic() - self._asked_at >= SUBJECT_REFRESH_S:
                    self._subject_ids = self.registry.subject_ids(self.subject)
                    self._asked_at = time.monotonic()
            if schema_id not in self._subject_ids:
                raise DecodeError(f"{self.label} has schema id {schema_id}, which is not a version of {self.subject}")
            text = self.registry.schema_of(schema_id)
            if text is None:
                raise DecodeError(f"{self.label} has schema id {schema_id}, which the registry does not know")
            try:
                raw = json.loads(text)
                same = to_parsing_canonical_form(raw) == to_parsing_canonical_form(json.loads(self.writer_str))
                known = (self.writer if same else parse_schema(_plain(raw)), not same)
            except Exception as exc:  # not Avro, or a schema fastavro cannot parse
                raise DecodeError(f"{self.label} has schema id {schema_id}, not a usable Avro schema: {exc}") from exc
            self._readers[schema_id] = known
        return known

    def decode(self, data: bytes) -> dict[str, Any]:
        if len(data) < HEADER_LENGTH or data[:1] != MAGIC:
            raise DecodeError(f"{self.label} is not in Confluent wire format (no 0x00 magic byte and schema id)")
        writer, resolve = self._writer_of(int.from_bytes(data[1:HEADER_LENGTH], "big"))
        try:  # schema resolution is costly in fastavro: only when the writer's version differs from ours
            record = schemaless_reader(io.BytesIO(data[HEADER_LENGTH:]), writer, self.writer if resolve else None)
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, UnicodeDecodeError, ...
            raise DecodeError(f"{self.label} body does not decode: {type(exc).__name__}: {exc}") from exc
        if not isinstance(record, dict):
            raise DecodeError(f"{self.label} decoded to {type(record).__name__}, expected a record")
        return record


KEY_CACHE_SIZE = 100_000


@dataclass(frozen=True)
class TopicSerde:
    """Encode and decode one topic's keys and values."""

    contract: TopicContract
    topic: str
    key: SideCodec
    value: SideCodec
    # Keys repeat (one per listener, work, rights holder) and encode deterministically,
    # so their bytes are cached by field values; the cache is dropped when full.
    _key_cache: dict[Any, bytes] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def for_topic(cls, logical_name: str, settings: KafkaSettings | None = None) -> TopicSerde:
        kafka = settings or KafkaSettings.from_env()
        return _serde(logical_name, kafka.topic(logical_name), kafka.registry)

    def encode_key(self, key: dict[str, Any]) -> bytes:
        # In schema order: a missing optional field encodes as its null default either way.
        names = self.key.field_names
        cache_key = key.get(names[0]) if len(names) == 1 else tuple(key.get(name) for name in names)
        encoded = self._key_cache.get(cache_key)
        if encoded is None:
            encoded = self.key.encode(key)
            if len(self._key_cache) >= KEY_CACHE_SIZE:
                self._key_cache.clear()
            self._key_cache[cache_key] = encoded
        return encoded

    def encode_value(self, value: dict[str, Any] | None) -> bytes | None:
        """Encode a value; ``None`` stays ``None`` (a tombstone on a compacted topic)."""
        return None if value is None else self.value.encode(value)

    def decode_key(self, data: bytes | None) -> dict[str, Any]:
        if data is None:
            raise DecodeError(f"{self.contract.name} record has no key")
        return self.key.decode(data)

    def decode_value(self, data: bytes | None) -> dict[str, Any] | None:
        return None if data is None else self.value.decode(data)


@cache
def _serde(logical_name: str, physical_name: str, registry: RegistrySettings) -> TopicSerde:
    topic_contract = contract(logical_name)
    ids = schema_ids(registry)
    return TopicSerde(
        contract=topic_contract,
        topic=physical_name,
        key=SideCodec.build(logical_name, physical_name, topic_contract.key, ids),
        value=SideCodec.build(logical_name, physical_name, topic_contract.value, ids),
    )


def register_schemas(kafka: KafkaSettings, contracts: dict[str, TopicContract]) -> dict[str, list[int]]:
    """Register every committed version of every topic's key and value, in order, under its
    subject, and set the subject's compatibility from the manifest (before the second version,
    so the registry itself checks each new version). Idempotent. Subject -> ids, in version order.
    A version the registry refuses (incompatible) raises SchemaRegistryError.

    Without a topic prefix the subjects are registered one after the other, so a fresh registry
    assigns its content ids in the same order every time (what lets the local in-memory registry
    restart). Prefixed environments (tests, benchmarks) register the same content again: their
    subjects go four at a time."""
    client = schema_ids(kafka.registry).client

    def one(side: SchemaSide, subject_name: str) -> list[int]:
        ids = []
        for n, version in enumerate(side.versions):
            ids.append(client.register_schema(subject_name, Schema(side.schema_str(version), "AVRO")))
            if n == 0:  # the subject exists now; its rule applies to every later version
                client.set_compatibility(subject_name, side.compatibility)
        return ids

    sides = [(side, subject(kafka.topic(name), side.role)) for name in sorted(contracts)
             for side in (contracts[name].key, contracts[name].value)]
    with ThreadPoolExecutor(4 if kafka.topic_prefix else 1) as pool:
        results = list(pool.map(lambda item: one(*item), sides))
    return {subject_name: ids for (_, subject_name), ids in zip(sides, results, strict=True)}
