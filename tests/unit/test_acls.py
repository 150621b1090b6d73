"""The generated ACLs follow the manifests and grant outside principals one thing each."""

from __future__ import annotations

from kit.acls import acls, kafka_acls_commands
from kit.contracts import load_contracts
from kit.settings import KafkaSettings

SETTINGS = KafkaSettings.from_env({"ENTRAIN_TOPIC_PREFIX": "prod."})


def grants(user: str) -> set[tuple[str, str, str]]:
    return {(a.operation, a.resource, a.name) for a in acls(SETTINGS) if a.user == user}


def test_outside_principals_get_exactly_one_job() -> None:
    assert grants("listener-app") == {("WRITE", "TOPIC", "prod.listener.telemetry.v1"),
                                      ("DESCRIBE", "TOPIC", "prod.listener.telemetry.v1")}
    finance_topics = {name for op, kind, name in grants("finance") if kind == "TOPIC"}
    assert finance_topics == {"prod.royalty.events.v1", "prod.royalty.play-ledger.v1"}
    assert {op for op, _, _ in grants("finance")} == {"READ", "DESCRIBE"}


def test_only_a_topics_producers_write_it_and_consumers_write_only_its_dlq() -> None:
    contracts = load_contracts()
    for a in acls(SETTINGS):
        if a.operation != "WRITE" or a.resource != "TOPIC" or a.pattern != "LITERAL":
            continue
        logical = a.name.removeprefix("prod.")
        if logical.endswith(".dlq"):
            assert a.user in contracts[logical.removesuffix(".dlq")].consumers
        else:
            assert logical in contracts and a.user in (*contracts[logical].producers, "listener-app"), a


def test_no_service_reads_what_it_does_not_consume() -> None:
    contracts = load_contracts()
    for a in acls(SETTINGS):
        if a.operation == "READ" and a.resource == "TOPIC" and a.pattern == "LITERAL":
            logical = a.name.removeprefix("prod.")
            if logical in contracts:
                readers = set(contracts[logical].consumers) | {"delivery", "finance"}
                assert a.user in readers, a


def test_kafka_acls_commands_name_principal_operation_and_pattern() -> None:
    [line] = [c for c in kafka_acls_commands(acls(SETTINGS)) if "User:listener-app" in c and "Write" in c]
    assert "--topic 'prod.listener.telemetry.v1' --resource-pattern-type literal" in line
