"""Single-object encoding: framing, fingerprints, schema evolution and bad bytes."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from avro.schema import _crc_64_fingerprint
from fastavro.schema import to_parsing_canonical_form
from hypothesis import given
from hypothesis import strategies as st

from kit.contracts import SchemaSide
from kit.serde import DecodeError, EncodeError, SideCodec, TopicSerde, schema_fingerprint

TELEMETRY = TopicSerde.for_topic("listener.telemetry.v1")
EXAMPLE = TELEMETRY.contract.examples()[0][1]


def test_fingerprint_matches_the_avro_reference_implementation() -> None:
    for side in (TELEMETRY.contract.key, TELEMETRY.contract.value):
        canonical = to_parsing_canonical_form(side.schema()).encode()
        reference = _crc_64_fingerprint(canonical)
        assert schema_fingerprint(side.schema()) == bytes(reference)


def test_encoded_value_carries_the_single_object_header() -> None:
    data = TELEMETRY.encode_value(EXAMPLE["value"])
    assert data is not None
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == schema_fingerprint(TELEMETRY.contract.value.schema())
    assert TELEMETRY.decode_value(data) == EXAMPLE["value"]


def test_tombstones_stay_none() -> None:
    assert TELEMETRY.encode_value(None) is None
    assert TELEMETRY.decode_value(None) is None


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "not Avro single-object encoded"),
    (b"{\"heart_rate\": 80}", "not Avro single-object encoded"),
    (b"\x00\x00\x00\x00\x01" + b"x" * 20, "not Avro single-object encoded"),
    (b"\xc3\x01" + b"\x00" * 8 + b"abc", "unknown schema fingerprint"),
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


def test_an_older_writer_version_decodes_into_the_latest_reader(tmp_path: Path) -> None:
    v1 = {"type": "record", "name": "Sample", "doc": "d", "fields": [
        {"name": "id", "type": "string", "doc": "d"}]}
    v2 = {"type": "record", "name": "Sample", "doc": "d", "fields": [
        {"name": "id", "type": "string", "doc": "d"},
        {"name": "speed_mps", "type": ["null", "double"], "default": None, "doc": "d"}]}
    (tmp_path / "value.v1.avsc").write_text(json.dumps(v1))
    (tmp_path / "value.v2.avsc").write_text(json.dumps(v2))
    old = SideCodec.build("t", SchemaSide("value", "BACKWARD", (1,), tmp_path))
    new = SideCodec.build("t", SchemaSide("value", "BACKWARD", (1, 2), tmp_path))
    written_by_old = old.encode({"id": "a"})
    assert new.decode(written_by_old) == {"id": "a", "speed_mps": None}
    assert new.decode(new.encode({"id": "b", "speed_mps": 3.5})) == {"id": "b", "speed_mps": 3.5}
    with pytest.raises(DecodeError, match="unknown schema fingerprint"):
        old.decode(new.encode({"id": "c", "speed_mps": 1.0}))
