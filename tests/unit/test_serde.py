"""Confluent wire format: framing, ids from the registry, schema evolution and bad bytes.

Against confluent-kafka's in-process mock registry (mock://); the real registry, a stock
client and the bytes of confluent-kafka's own serializer are in
tests/integration/test_schema_registry.py."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import entrain_avro
import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.registry_fixtures import UNIT_KAFKA, mock_registry

from kit.contracts import SchemaSide, load_contracts
from kit.serde import DecodeError, EncodeError, SchemaNotRegistered, SideCodec, TopicSerde, _plain, _plan, schema_ids

TELEMETRY = TopicSerde.for_topic("listener.telemetry.v1", UNIT_KAFKA)
EXAMPLE = TELEMETRY.contract.examples()[0][1]


def test_encoded_value_carries_the_magic_byte_and_the_registered_id() -> None:
    data = TELEMETRY.encode_value(EXAMPLE["value"])
    assert data is not None
    client = schema_ids(UNIT_KAFKA.registry).client
    latest = client.get_latest_version("listener.telemetry.v1-value")
    assert data[:1] == b"\x00" and int.from_bytes(data[1:5], "big") == latest.schema_id
    assert json.loads(latest.schema.schema_str) == TELEMETRY.contract.value.schema()
    assert TELEMETRY.decode_value(data) == EXAMPLE["value"]


def test_tombstones_stay_none() -> None:
    assert TELEMETRY.encode_value(None) is None
    assert TELEMETRY.decode_value(None) is None


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "not in Confluent wire format"),
    (b"{\"heart_rate\": 80}", "not in Confluent wire format"),
    (b"\xc3\x01" + b"\x00" * 8 + b"abc", "not in Confluent wire format"),  # the old single-object framing
    (b"\x00\x00\x01\x00\x00" + b"x" * 20, "schema id 65536, which is not a version of listener.telemetry.v1-value"),
])
def test_foreign_bytes_are_a_decode_error_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        TELEMETRY.decode_value(data)


def test_a_truncated_body_is_a_decode_error() -> None:
    data = TELEMETRY.encode_value(EXAMPLE["value"])
    assert data is not None
    with pytest.raises(DecodeError, match="body does not decode"):
        TELEMETRY.decode_value(data[:20])


@given(st.binary(max_size=300))
def test_no_byte_string_crashes_the_decoder(data: bytes) -> None:
    header = TELEMETRY.value.header
    for candidate in (data, header + data):
        with contextlib.suppress(DecodeError):
            TELEMETRY.decode_value(candidate)


def test_a_record_that_does_not_fit_is_an_encode_error() -> None:
    with pytest.raises(EncodeError, match=r"listener\.telemetry\.v1 value"):
        TELEMETRY.encode_value({**EXAMPLE["value"], "heart_rate_bpm": "fast"})


def test_an_unregistered_schema_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    (tmp_path / "value.v1.avsc").write_text(json.dumps({"type": "record", "name": "X", "fields": []}))
    codec = SideCodec.build("t", "never-registered", SchemaSide("value", "BACKWARD", (1,), tmp_path),
                            schema_ids(mock_registry("empty")))
    with pytest.raises(SchemaNotRegistered, match="make topics"):
        codec.encode({})


def test_an_older_writer_version_decodes_into_the_latest_reader(tmp_path: Path) -> None:
    v1 = {"type": "record", "name": "Sample", "doc": "d", "fields": [
        {"name": "id", "type": "string", "doc": "d"}]}
    v2 = {"type": "record", "name": "Sample", "doc": "d", "fields": [
        {"name": "id", "type": "string", "doc": "d"},
        {"name": "speed_mps", "type": ["null", "double"], "default": None, "doc": "d"}]}
    (tmp_path / "value.v1.avsc").write_text(json.dumps(v1))
    (tmp_path / "value.v2.avsc").write_text(json.dumps(v2))
    registry = schema_ids(mock_registry("evolution"))
    from confluent_kafka.schema_registry import Schema
    for text in (json.dumps(v1), json.dumps(v2)):
        registry.client.register_schema("t-value", Schema(text, "AVRO"))
    old = SideCodec.build("t", "t", SchemaSide("value", "BACKWARD", (1,), tmp_path), registry)
    new = SideCodec.build("t", "t", SchemaSide("value", "BACKWARD", (1, 2), tmp_path), registry)
    written_by_old = old.encode({"id": "a"})
    assert new.decode(written_by_old) == {"id": "a", "speed_mps": None}
    assert new.decode(new.encode({"id": "b", "speed_mps": 3.5})) == {"id": "b", "speed_mps": 3.5}
    assert old.decode(new.encode({"id": "c", "speed_mps": 1.0})) == {"id": "c"}  # a newer writer, an older reader


def test_a_record_under_another_topic_s_schema_id_is_refused_without_fetching_that_schema() -> None:
    works = TopicSerde.for_topic("catalog.works.v1", UNIT_KAFKA)
    foreign = works.encode_value(works.contract.examples()[0][1]["value"])
    assert foreign is not None
    with pytest.raises(DecodeError, match=r"not a version of listener\.telemetry\.v1-value"):
        TELEMETRY.decode_value(foreign)


# The kit encodes with its own encoder (native/entrain_avro) and decodes with fastavro (kit.serde
# says why): the bytes must be the Avro binary fastavro (and so confluent-kafka's AvroSerializer)
# writes, for every schema.
SIDES = [(name, side) for name, c in sorted(load_contracts().items()) for side in (c.key, c.value)]


def fastavro_bytes(schema: Any, record: Any) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, parse_schema(_plain(schema)), record)
    return out.getvalue()


def test_every_committed_example_encodes_to_fastavro_s_bytes() -> None:
    checked = 0
    for name, topic in sorted(load_contracts().items()):
        serde = TopicSerde.for_topic(name, UNIT_KAFKA)
        for _, example in topic.examples():
            for side, codec, record in (("key", serde.key, example["key"]), ("value", serde.value, example["value"])):
                if record is None:
                    continue
                schema = (topic.key if side == "key" else topic.value).schema()
                assert codec.encode(record) == codec.header + fastavro_bytes(schema, record), (name, side)
                checked += 1
    assert checked >= len(SIDES)  # each topic has an example with a key and a value


def avro_values(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of an Avro schema (the types our schemas use)."""
    if isinstance(schema, str):
        if schema in named:
            return avro_values(named[schema], named)
        return {"string": st.text(max_size=20), "boolean": st.booleans(), "null": st.none(),
                "int": st.integers(-2**31, 2**31 - 1), "long": st.integers(-2**63, 2**63 - 1),
                "double": st.floats(allow_nan=False)}[schema]
    if isinstance(schema, list):
        return st.one_of([avro_values(branch, named) for branch in schema])
    kind = schema["type"]
    if kind == "record":
        named[schema["name"]] = schema
        return st.fixed_dictionaries({f["name"]: avro_values(f["type"], named) for f in schema["fields"]})
    if kind == "enum":
        named[schema["name"]] = schema
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(avro_values(schema["items"], named), max_size=3)
    return avro_values(kind, named)


@pytest.mark.parametrize(("name", "side"), SIDES, ids=[f"{n}-{s.role}" for n, s in SIDES])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_generated_records_encode_to_fastavro_s_bytes(name: str, side: SchemaSide, data: st.DataObject) -> None:
    schema = _plain(side.schema())
    record = data.draw(avro_values(schema, {}))
    codec = getattr(TopicSerde.for_topic(name, UNIT_KAFKA), side.role)
    assert codec.encode(record)[5:] == fastavro_bytes(schema, record)


@pytest.mark.parametrize(("field", "value"), [
    ("event_time", 1.5),  # fastavro writes 1
    ("event_time", True),  # fastavro writes 1
    ("music", None),  # fastavro writes false
    ("music", 1),
    ("activity", "FLYING"),
    ("heart_rate_bpm", 2**31),
    ("event_time", 2**63),
    ("event_time", "1"),
    ("event_id", None),
    ("event_id", b"bytes"),
    ("device", 7),
])
def test_values_fastavro_would_coerce_are_encode_errors(field: str, value: Any) -> None:
    with pytest.raises(EncodeError, match=r"listener\.telemetry\.v1 value record does not fit"):
        TELEMETRY.encode_value({**EXAMPLE["value"], field: value})


def test_the_reason_names_the_field_and_what_it_expected() -> None:
    with pytest.raises(EncodeError, match=r"field heart_rate_bpm: expected null or int, got str 'fast'"):
        TELEMETRY.encode_value({**EXAMPLE["value"], "heart_rate_bpm": "fast"})
    missing = {k: v for k, v in EXAMPLE["value"].items() if k != "event_id"}
    with pytest.raises(EncodeError, match="field event_id: missing, and the field has no default"):
        TELEMETRY.encode_value(missing)


def test_a_missing_field_with_a_default_is_written_as_its_default() -> None:
    value = EXAMPLE["value"]
    without = {k: v for k, v in value.items() if k not in ("device", "guide_target")}
    assert TELEMETRY.encode_value(without) == TELEMETRY.encode_value({**value, "device": None, "guide_target": "NONE"})


# Types and shapes none of our schemas use yet, so the generated-record test above does not reach them.
EVERY_KIND = {"type": "record", "name": "Outer", "namespace": "t", "fields": [
    {"name": "f", "type": "float"}, {"name": "d", "type": "double"}, {"name": "b", "type": "bytes"},
    {"name": "x", "type": {"type": "fixed", "name": "Four", "size": 4}},
    {"name": "m", "type": {"type": "map", "values": ["null", "long"]}},
    {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}}]}},
    {"name": "again", "type": ["null", "Inner"]},  # a named type used a second time, by name
    {"name": "either", "type": ["Four", "Inner", "t.E", "double"]},
    {"name": "late", "type": ["string", "null"], "default": "hi"},
]}


def every_kind() -> st.SearchStrategy[dict[str, Any]]:
    inner = st.fixed_dictionaries({"tags": st.lists(st.text(max_size=5), max_size=3), "e": st.sampled_from("ABC")})
    four = st.binary(min_size=4, max_size=4)
    return st.fixed_dictionaries({
        "f": st.floats(width=32, allow_nan=False), "d": st.floats(allow_nan=False) | st.integers(-2**53, 2**53),
        "b": st.binary(max_size=10), "x": four,
        "m": st.dictionaries(st.text(max_size=5), st.none() | st.integers(-2**63, 2**63 - 1), max_size=3),
        "inner": inner, "again": st.none() | inner, "either": four | inner | st.sampled_from("ABC") | st.floats(),
    }, optional={"late": st.none() | st.text(max_size=5)})


@settings(max_examples=200, deadline=None)
@given(record=every_kind())
def test_every_avro_kind_encodes_to_fastavro_s_bytes(record: dict[str, Any]) -> None:
    expected = fastavro_bytes(EVERY_KIND, {"late": "hi", **record})
    assert entrain_avro.Encoder(_plan(EVERY_KIND)).encode(record) == expected


def test_a_recursive_or_unknown_type_is_refused_when_the_plan_is_built() -> None:
    with pytest.raises(ValueError, match="unknown or recursive type 'Node'"):
        _plan({"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]})


@pytest.mark.parametrize("union", [["float", "double"], [
    {"type": "record", "name": "A", "fields": []}, {"type": "record", "name": "B", "fields": []}],
    [{"type": "record", "name": "A", "fields": []}, {"type": "map", "values": "int"}]])
def test_unions_where_the_encoder_and_fastavro_could_choose_differently_are_refused(union: list[Any]) -> None:
    with pytest.raises(ValueError, match="ambiguous"):
        _plan({"type": "record", "name": "R", "fields": [{"name": "u", "type": union}]})


def test_a_dotted_name_carries_its_namespace_and_a_bad_default_names_its_field() -> None:
    schema = {"type": "record", "name": "a.b.C", "namespace": "x", "fields": [
        {"name": "d", "type": {"type": "enum", "name": "D", "symbols": ["P", "Q"]}}, {"name": "d2", "type": "a.b.D"},
        {"name": "raw", "type": "bytes", "default": "\u00ff\u0001"}]}
    assert entrain_avro.Encoder(_plan(schema)).encode({"d": "P", "d2": "Q"}) == fastavro_bytes(
        schema, {"d": "P", "d2": "Q", "raw": b"\xff\x01"})
    with pytest.raises(ValueError, match=r"R\.n: the default 'x' does not fit"):
        _plan({"type": "record", "name": "R", "fields": [{"name": "n", "type": "int", "default": "x"}]})
