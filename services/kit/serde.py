"""Avro serde for topic keys and values: Avro single-object encoding.

Every key and value on an Entrain topic is::

    C3 01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema | Avro binary body

(the Avro specification's *single-object encoding*). The fingerprint names the
writer's schema version; decoders find it among the versions committed under
``schemas/`` and resolve it to their own (latest) version, so records written by
an older producer still decode after a BACKWARD-compatible change.

Why not Confluent wire format with a registry: see "Schema registry" in the
README. Nothing outside this module depends on the encoding; a registry-backed
serde can replace it behind the same four methods.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from kit.contracts import SchemaSide, TopicContract, contract
from kit.settings import KafkaSettings

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
HEADER_LENGTH = 10


class DecodeError(ValueError):
    """Bytes on a topic could not be decoded with any version of the topic's schema."""


class EncodeError(ValueError):
    """A record does not fit its topic's schema (a bug in the producing code)."""


def schema_fingerprint(schema: dict[str, Any] | str) -> bytes:
    """The 8-byte little-endian CRC-64-AVRO fingerprint of a schema's Parsing Canonical Form."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def _plain(schema: Any) -> Any:
    """The schema without logicalType annotations.

    Timestamps stay epoch milliseconds (``int``) in Python, as on the wire: no
    datetime objects are built per record, and the fingerprint (computed from the
    canonical form, which drops logicalType anyway) is unchanged.
    """
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


@dataclass(frozen=True)
class SideCodec:
    """Encoder/decoder for one side (key or value) of one topic."""

    label: str
    writer: Any  # fastavro parsed schema of the latest version
    header: bytes
    readers: dict[bytes, Any]  # fingerprint -> parsed writer schema of every version
    field_names: tuple[str, ...]  # top-level fields of the latest version, in order

    @classmethod
    def build(cls, topic_name: str, side: SchemaSide) -> SideCodec:
        readers = {}
        for version in side.versions:
            raw = side.schema(version)
            readers[schema_fingerprint(raw)] = parse_schema(_plain(raw))
        latest = side.schema()
        return cls(
            label=f"{topic_name} {side.role}",
            writer=parse_schema(_plain(latest)),
            header=SINGLE_OBJECT_MAGIC + schema_fingerprint(latest),
            readers=readers,
            field_names=tuple(f["name"] for f in latest.get("fields", ())),
        )

    def encode(self, record: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        out.write(self.header)
        try:
            schemaless_writer(out, self.writer, record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise EncodeError(f"{self.label} record does not fit its schema: {type(exc).__name__}: {exc}") from exc
        return out.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        if len(data) < HEADER_LENGTH or data[:2] != SINGLE_OBJECT_MAGIC:
            raise DecodeError(f"{self.label} is not Avro single-object encoded (no C3 01 header)")
        fp = bytes(data[2:HEADER_LENGTH])
        writer = self.readers.get(fp)
        if writer is None:
            raise DecodeError(f"{self.label} has unknown schema fingerprint {fp.hex()}")
        # Schema resolution is costly in fastavro; skip it when writer == reader.
        reader = None if fp == self.header[2:] else self.writer
        try:
            record = schemaless_reader(io.BytesIO(data[HEADER_LENGTH:]), writer, reader)
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
    _key_cache: dict[tuple[Any, ...], bytes] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def for_topic(cls, logical_name: str, settings: KafkaSettings | None = None) -> TopicSerde:
        return _serde(logical_name, settings.topic(logical_name) if settings else logical_name)

    def encode_key(self, key: dict[str, Any]) -> bytes:
        # In schema order: a missing optional field encodes as its null default either way.
        cache_key = tuple(key.get(name) for name in self.key.field_names)
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
def _serde(logical_name: str, physical_name: str) -> TopicSerde:
    topic_contract = contract(logical_name)
    return TopicSerde(
        contract=topic_contract,
        topic=physical_name,
        key=SideCodec.build(logical_name, topic_contract.key),
        value=SideCodec.build(logical_name, topic_contract.value),
    )
