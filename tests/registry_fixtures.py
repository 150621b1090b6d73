"""Unit tests' schema registry: confluent-kafka's in-process mock, with every committed schema
registered as ``make topics`` registers them (kit.serde.register_schemas)."""

from __future__ import annotations

from dataclasses import replace

from confluent_kafka.schema_registry._sync.mock_schema_registry_client import MockSchemaRegistryClient

from kit.contracts import load_contracts
from kit.serde import register_schemas, schema_ids
from kit.settings import KafkaSettings, RegistrySettings


class MockRegistry(MockSchemaRegistryClient):
    """The library's mock, plus the per-subject compatibility it does not keep (it would ask a
    real server). Compatibility itself is checked by the real registry in the integration tests."""

    def __init__(self, conf: dict) -> None:
        super().__init__(conf)
        self.compatibility: dict[str | None, str] = {}

    def set_compatibility(self, subject_name: str | None = None, level: str | None = None) -> str:
        self.compatibility[subject_name] = str(level)
        return str(level)


def mock_registry(name: str) -> RegistrySettings:
    settings = RegistrySettings(url=f"mock://{name}", local=False)
    schema_ids(settings).client = MockRegistry(settings.client_config())
    return settings


UNIT_KAFKA = replace(KafkaSettings(bootstrap_servers="127.0.0.1:1"), registry=mock_registry("unit-tests"))
register_schemas(UNIT_KAFKA, load_contracts())
