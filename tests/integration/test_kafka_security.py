"""The kit's SASL and TLS settings and the generated ACLs against the local broker's SCRAM-SHA-512
listeners, plain and TLS (the broker runs Kafka's StandardAuthorizer: a SCRAM user gets only what
ACLs grant)."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError
from confluent_kafka import Producer as RawProducer

from kit.acls import Acl, acls, apply
from kit.producer import Producer
from kit.serde import TopicSerde
from kit.settings import KafkaSettings
from tests.kafka_helpers import read_all, scram_client


@pytest.fixture
def local(isolated: KafkaSettings) -> KafkaSettings:
    if not isolated.local_kafka:
        pytest.skip("the SCRAM listener and the authorizer belong to the local broker")
    return isolated


def example(topic: str) -> tuple[dict[str, Any], dict[str, Any]]:
    record = TopicSerde.for_topic(topic).contract.examples()[0][1]
    return record["key"], record["value"]


def produce_error(settings: KafkaSettings, topic: str) -> str | None:
    """Produce one example record as ``settings``' user; the error code name, or None."""
    serde = TopicSerde.for_topic(topic, settings)
    key, value = example(topic)
    outcome: list[str | None] = []
    producer = RawProducer({**settings.client_config(), "message.timeout.ms": 8000})
    producer.produce(serde.topic, serde.encode_key(key), serde.encode_value(value),
                     on_delivery=lambda err, _: outcome.append(None if err is None else err.name()))
    producer.flush(15)
    return outcome[0] if outcome else "NO_REPORT"


def read_outcome(settings: KafkaSettings, topic: str, group: str, timeout_s: float = 10) -> tuple[int, str | None]:
    """(records read, first error code name) reading ``topic`` from the start as ``group``."""
    consumer = Consumer({**settings.client_config(), "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([settings.topic(topic)])
    count, error = 0, None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not count and error is None:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error() is None:
            count += 1
        elif msg.error().code() != KafkaError._PARTITION_EOF:
            error = msg.error().name()
    consumer.close()
    return count, error


@pytest.mark.parametrize("tls", [False, True], ids=["sasl_plaintext", "sasl_ssl"])
def test_a_scram_user_produces_and_consumes_and_a_wrong_password_cannot(local: KafkaSettings, tls: bool) -> None:
    user = f"svc-{uuid.uuid4().hex[:6]}"
    scram = scram_client(local, user, tls)
    assert scram.client_config()["sasl.mechanism"] == "SCRAM-SHA-512"
    telemetry = scram.topic("listener.telemetry.v1")
    apply(local, [Acl(f"User:{user}", "TOPIC", telemetry, "LITERAL", op) for op in ("WRITE", "READ", "DESCRIBE")]
          + [Acl(f"User:{user}", "GROUP", "reader-", "PREFIXED", "READ")])
    key, value = example("listener.telemetry.v1")
    producer = Producer(scram, "scram-test")
    producer.produce(TopicSerde.for_topic("listener.telemetry.v1", scram), key, value)
    assert producer.flush(30) == 0
    [message] = read_all(scram, telemetry, 1)
    assert TopicSerde.for_topic("listener.telemetry.v1").decode_value(message.value()) == value

    wrong = replace(scram, sasl_password="not-the-password")
    rejected = Producer(wrong, "scram-test", {"message.timeout.ms": 5000})
    rejected.produce(TopicSerde.for_topic("listener.telemetry.v1", wrong), key, value)
    assert rejected.flush(15) == 0  # the delivery failed (counted), it did not hang
    assert len(read_all(scram, telemetry, 2, timeout_s=3)) == 1
    if tls:  # a client that does not trust the local CA cannot complete the TLS handshake
        assert produce_error(replace(scram, ssl_ca_location=None), "listener.telemetry.v1") is not None


def test_generated_acls_let_each_principal_do_its_job_and_nothing_else(local: KafkaSettings) -> None:
    apply(local, acls(local))
    admin_producer = Producer(local, "acl-test")
    for topic in ("royalty.events.v1", "listener.telemetry.v1"):
        key, value = example(topic)
        admin_producer.produce(TopicSerde.for_topic(topic, local), key, value)
    assert admin_producer.flush(30) == 0

    finance = scram_client(local, "finance")
    assert read_outcome(finance, "royalty.events.v1", f"finance-{uuid.uuid4().hex[:6]}") == (1, None)
    assert produce_error(finance, "royalty.events.v1") == "TOPIC_AUTHORIZATION_FAILED"
    assert read_outcome(finance, "listener.telemetry.v1", f"finance-{uuid.uuid4().hex[:6]}")[1] in (
        "TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED")

    app = scram_client(local, "listener-app")
    assert produce_error(app, "listener.telemetry.v1") is None
    assert produce_error(app, "listener.plays.v1") == "TOPIC_AUTHORIZATION_FAILED"
    assert read_outcome(app, "listener.telemetry.v1", f"app-{uuid.uuid4().hex[:6]}")[1] in (
        "TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED")

    ingest = scram_client(local, "ingest")
    assert produce_error(ingest, "listener.plays.v1") is None
    assert produce_error(ingest, "royalty.events.v1") == "TOPIC_AUTHORIZATION_FAILED"
