"""Confluent wire format: framing, ids from the registry, schema evolution and bad bytes.

Against confluent-kafka's in-process mock registry (mock://); the real registry, a stock
client and the bytes of confluent-kafka's own serializer are in
tests/integration/test_schema_registry.py."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.registry_fixtures import UNIT_KAFKA, mock_registry

from kit.contracts import SchemaSide
from kit.serde import DecodeError, EncodeError, SchemaNotRegistered, SideCodec, TopicSerde, schema_ids

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
