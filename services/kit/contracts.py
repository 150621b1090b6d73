"""Topic contracts: the manifests, Avro schemas and examples under ``schemas/``.

One folder per topic::

    schemas/<topic>/manifest.yaml        description, owner, consumers, partitions, ...
    schemas/<topic>/key.v<N>.avsc        key schema versions (FULL compatibility)
    schemas/<topic>/value.v<N>.avsc      value schema versions (BACKWARD compatibility)
    schemas/<topic>/examples/v<N>/*.json {"key": ..., "value": ...} for version N

This module only reads files; it never talks to Kafka.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from kit.settings import SCHEMAS_DIR

COMPATIBILITY_MODES = (
    "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE", "NONE",
)
CLEANUP_POLICIES = ("delete", "compact", "compact,delete")
REQUIRED_FIELDS = (
    "topic", "description", "owner", "producers", "consumers", "key", "value",
    "partitions", "retention_ms", "cleanup_policy", "dlq",
)


class ContractError(ValueError):
    """A manifest, schema or example under schemas/ is incomplete or inconsistent."""


@dataclass(frozen=True)
class SchemaSide:
    """The key or the value side of a topic: its versions and compatibility mode."""

    role: str  # "key" or "value"
    compatibility: str
    versions: tuple[int, ...]
    folder: Path

    def path(self, version: int) -> Path:
        return self.folder / f"{self.role}.v{version}.avsc"

    def schema(self, version: int | None = None) -> dict[str, Any]:
        """The parsed JSON of a version (the latest by default)."""
        schema = _load_json(self.path(self.latest if version is None else version))
        if not isinstance(schema, dict):
            raise ContractError(f"{self.path(version or self.latest)} must hold a record schema")
        return schema

    def schema_str(self, version: int | None = None) -> str:
        return self.path(self.latest if version is None else version).read_text()

    @property
    def latest(self) -> int:
        return self.versions[-1]


@dataclass(frozen=True)
class TopicContract:
    """Everything the platform knows about one logical topic."""

    name: str
    description: str
    owner: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    key: SchemaSide
    value: SchemaSide
    partitions: int
    retention_ms: int
    cleanup_policy: str
    dlq: bool
    folder: Path
    extra_config: tuple[tuple[str, str], ...] = ()

    @property
    def dlq_name(self) -> str:
        return f"{self.name}.dlq"

    def examples(self, version: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        """(file name, {"key":..., "value":...}) for every example of a value version."""
        version = self.value.latest if version is None else version
        folder = self.folder / "examples" / f"v{version}"
        return [(p.name, _load_json(p)) for p in sorted(folder.glob("*.json"))]

    def topic_config(self) -> dict[str, str]:
        """Broker-side topic configuration derived from the manifest."""
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy,
                **dict(self.extra_config)}


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ContractError(f"{path} is missing") from None
    except json.JSONDecodeError as exc:
        raise ContractError(f"{path} is not valid JSON: {exc}") from None


def _side(raw: Any, role: str, folder: Path, manifest: Path) -> SchemaSide:
    if not isinstance(raw, dict):
        raise ContractError(f"{manifest}: '{role}' must be a mapping with compatibility and versions")
    mode = raw.get("compatibility")
    if mode not in COMPATIBILITY_MODES:
        raise ContractError(f"{manifest}: {role}.compatibility must be one of {COMPATIBILITY_MODES}, got {mode!r}")
    versions = raw.get("versions")
    if not versions or not all(isinstance(v, int) for v in versions):
        raise ContractError(f"{manifest}: {role}.versions must be a non-empty list of integers")
    if list(versions) != list(range(1, len(versions) + 1)):
        raise ContractError(f"{manifest}: {role}.versions must be 1..N without gaps, got {versions}")
    return SchemaSide(role=role, compatibility=mode, versions=tuple(versions), folder=folder)


def load_contract(folder: Path) -> TopicContract:
    manifest = folder / "manifest.yaml"
    try:
        raw = yaml.safe_load(manifest.read_text())
    except FileNotFoundError:
        raise ContractError(f"{folder} has no manifest.yaml") from None
    if not isinstance(raw, dict):
        raise ContractError(f"{manifest} must be a mapping")
    missing = [f for f in REQUIRED_FIELDS if raw.get(f) in (None, "", [])]
    if missing:
        raise ContractError(f"{manifest} lacks {', '.join(missing)}")
    if raw["topic"] != folder.name:
        raise ContractError(f"{manifest}: topic {raw['topic']!r} does not match its folder {folder.name!r}")
    if raw["cleanup_policy"] not in CLEANUP_POLICIES:
        raise ContractError(f"{manifest}: cleanup_policy must be one of {CLEANUP_POLICIES}")
    if not isinstance(raw["partitions"], int) or raw["partitions"] < 1:
        raise ContractError(f"{manifest}: partitions must be a positive integer")
    if not isinstance(raw["retention_ms"], int) or (raw["retention_ms"] < 1 and raw["retention_ms"] != -1):
        raise ContractError(f"{manifest}: retention_ms must be positive or -1 (forever)")
    return TopicContract(
        name=raw["topic"],
        description=" ".join(str(raw["description"]).split()),
        owner=raw["owner"],
        producers=tuple(raw["producers"]),
        consumers=tuple(raw["consumers"]),
        key=_side(raw["key"], "key", folder, manifest),
        value=_side(raw["value"], "value", folder, manifest),
        partitions=raw["partitions"],
        retention_ms=raw["retention_ms"],
        cleanup_policy=raw["cleanup_policy"],
        dlq=bool(raw["dlq"]),
        folder=folder,
        extra_config=tuple((str(k), str(v)) for k, v in (raw.get("config") or {}).items()),
    )


@cache
def load_contracts(root: Path = SCHEMAS_DIR) -> dict[str, TopicContract]:
    """Every topic contract under ``root``, by logical topic name."""
    contracts = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        contract = load_contract(folder)
        contracts[contract.name] = contract
    return contracts


def contract(name: str) -> TopicContract:
    try:
        return load_contracts()[name]
    except KeyError:
        raise ContractError(f"no contract for topic {name!r} under {SCHEMAS_DIR}") from None
