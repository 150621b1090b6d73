"""The event model in schemas/ is complete, documented, valid and evolvable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.schema import parse as parse_avro
from fastavro import parse_schema
from fastavro.validation import validate
from tests.registry_fixtures import UNIT_KAFKA

from kit.contracts import TopicContract, load_contracts
from kit.serde import TopicSerde
from kit.settings import SCHEMAS_DIR

DESIGN_TOPICS = {
    "listener.telemetry.v1", "listener.plays.v1", "catalog.consent.v1", "catalog.works.v1",
    "soundtrack.requests.v1", "soundtrack.segments.generated.v1", "soundtrack.segments.v1", "royalty.events.v1",
}
INTERNAL_TOPICS = {"royalty.play-ledger.v1"}  # a service's own state, still a contract
INTERNAL_TOPICS |= {"listener.erasures.v1"}  # the data-deletion path (issue: data lifecycle)
INTERNAL_TOPICS |= {"inference.models.v1"}  # the model registry: versions retired when training consent ends
INTERNAL_TOPICS |= {"watermark.registry.v1"}  # the provenance registry every detection instance materialises
INTERNAL_TOPICS |= {"soundtrack.admissions.v1"}  # admission control: sessions refused at capacity (#16)
CONTRACTS = load_contracts()
SIDES = [(c, side) for c in CONTRACTS.values() for side in (c.key, c.value)]


def side_id(item: tuple[TopicContract, object]) -> str:
    return f"{item[0].name}:{item[1].role}"  # type: ignore[attr-defined]


def test_every_designed_topic_has_a_contract() -> None:
    assert set(CONTRACTS) == DESIGN_TOPICS | INTERNAL_TOPICS


@pytest.mark.parametrize("contract", CONTRACTS.values(), ids=lambda c: c.name)
def test_manifest_is_complete(contract: TopicContract) -> None:
    assert len(contract.description) >= 40, "describe what the topic carries and why"
    assert contract.owner in contract.producers
    assert contract.consumers
    assert contract.key.compatibility == "FULL", "keys decide partitions: they must read both ways"
    assert contract.value.compatibility.startswith(("BACKWARD", "FULL"))
    if contract.cleanup_policy == "compact":
        assert contract.retention_ms == -1


def test_co_partitioned_topics_have_equal_partition_counts() -> None:
    assert CONTRACTS["royalty.play-ledger.v1"].partitions == CONTRACTS["listener.plays.v1"].partitions


def _undocumented(schema: object, path: str = "") -> list[str]:
    missing = []
    if isinstance(schema, dict):
        if schema.get("type") in ("record", "enum") and not schema.get("doc"):
            missing.append(path or schema.get("name", "?"))
        for field in schema.get("fields", []):
            if not field.get("doc"):
                missing.append(f"{path}.{field['name']}")
            missing += _undocumented(field["type"], f"{path}.{field['name']}")
        if schema.get("type") == "array":
            missing += _undocumented(schema["items"], path + "[]")
    elif isinstance(schema, list):
        for branch in schema:
            missing += _undocumented(branch, path)
    return missing


@pytest.mark.parametrize(("contract", "side"), SIDES, ids=[side_id(s) for s in SIDES])
def test_every_schema_version_parses_and_every_field_is_documented(contract: TopicContract, side) -> None:
    for version in side.versions:
        schema = side.schema(version)
        parse_schema(schema)
        parse_avro(json.dumps(schema))
        assert _undocumented(schema) == []


@pytest.mark.parametrize("contract", CONTRACTS.values(), ids=lambda c: c.name)
def test_every_value_version_has_examples_that_validate_and_round_trip(contract: TopicContract) -> None:
    serde = TopicSerde.for_topic(contract.name, UNIT_KAFKA)  # the in-process mock registry: no servers
    for version in contract.value.versions:
        examples = contract.examples(version)
        assert examples, f"{contract.name} v{version} has no example"
        key_schema = parse_schema(contract.key.schema(min(version, contract.key.latest)))
        value_schema = parse_schema(contract.value.schema(version))
        for name, example in examples:
            assert set(example) == {"key", "value"}, name
            assert validate(example["key"], key_schema, raise_errors=True), name
            assert validate(example["value"], value_schema, raise_errors=True), name
            if version == contract.value.latest:
                assert serde.decode_key(serde.encode_key(example["key"])) == example["key"]
                assert serde.decode_value(serde.encode_value(example["value"])) == example["value"]


def _compatible(reader: dict, writer: dict) -> bool:
    result = ReaderWriterCompatibilityChecker().get_compatibility(
        parse_avro(json.dumps(reader)), parse_avro(json.dumps(writer)))
    return result.compatibility is SchemaCompatibilityType.compatible


def compatible_under(mode: str, new: dict, old: dict) -> bool:
    backward = _compatible(reader=new, writer=old)
    forward = _compatible(reader=old, writer=new)
    return {"BACKWARD": backward, "FORWARD": forward, "FULL": backward and forward, "NONE": True}[
        mode.removesuffix("_TRANSITIVE")]


@pytest.mark.parametrize(("contract", "side"), SIDES, ids=[side_id(s) for s in SIDES])
def test_each_version_is_compatible_with_the_previous_under_its_mode(contract: TopicContract, side) -> None:
    for version in side.versions[1:]:
        previous = [version - 1] if not side.compatibility.endswith("_TRANSITIVE") else range(1, version)
        for old in previous:
            assert compatible_under(side.compatibility, side.schema(version), side.schema(old)), (
                f"{contract.name} {side.role} v{version} breaks {side.compatibility} against v{old}")


def test_the_compatibility_check_rejects_breaking_changes() -> None:
    """Guards the check above against passing vacuously."""
    old = CONTRACTS["listener.telemetry.v1"].value.schema()
    new_required = json.loads(json.dumps(old))
    new_required["fields"].append({"name": "skin_temp_c", "type": "double", "doc": "no default: breaks readers"})
    new_optional = json.loads(json.dumps(old))
    new_optional["fields"].append({"name": "skin_temp_c", "type": ["null", "double"], "default": None, "doc": "ok"})
    dropped = json.loads(json.dumps(old))
    dropped["fields"] = [f for f in dropped["fields"] if f["name"] != "session_id"]
    assert not compatible_under("BACKWARD", new_required, old)
    assert compatible_under("BACKWARD", new_optional, old)
    assert compatible_under("FULL", new_optional, old)
    assert compatible_under("BACKWARD", dropped, old)
    assert not compatible_under("FORWARD", dropped, old)


def test_no_orphan_files_under_schemas() -> None:
    expected = {SCHEMAS_DIR / "README.md"}
    for contract in CONTRACTS.values():
        expected.add(contract.folder / "manifest.yaml")
        expected |= {contract.key.path(v) for v in contract.key.versions}
        expected |= {contract.value.path(v) for v in contract.value.versions}
        expected |= {contract.folder / "examples" / f"v{v}" / name
                     for v in contract.value.versions for name, _ in contract.examples(v)}
    actual = {p for p in Path(SCHEMAS_DIR).rglob("*") if p.is_file()}
    assert sorted(map(str, actual - expected)) == [], "files no manifest refers to"
    assert sorted(map(str, expected - actual)) == [], "files a manifest refers to that do not exist"
