"""The kit's SASL settings against the local broker's SCRAM-SHA-512 listener."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import replace

import pytest
from confluent_kafka.admin import AdminClient, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

from kit.producer import Producer
from kit.serde import TopicSerde
from kit.settings import KafkaSettings
from tests.kafka_helpers import read_all


def test_a_scram_user_produces_and_consumes_and_a_wrong_password_cannot(isolated: KafkaSettings) -> None:
    if not isolated.local_kafka:
        pytest.skip("the SCRAM listener is part of the local broker only")
    user, password = f"svc-{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(16)
    admin = AdminClient(isolated.client_config())
    upsert = UserScramCredentialUpsertion(user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096),
                                          password.encode())
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result()
    scram = KafkaSettings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{isolated.kafka_scram_port}",
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_USERNAME": user, "KAFKA_SASL_PASSWORD": password, "ENTRAIN_TOPIC_PREFIX": isolated.topic_prefix})
    assert scram.client_config()["sasl.mechanism"] == "SCRAM-SHA-512"
    example = TopicSerde.for_topic("listener.telemetry.v1").contract.examples()[0][1]
    producer = Producer(scram, "scram-test")
    producer.produce(TopicSerde.for_topic("listener.telemetry.v1", scram), example["key"], example["value"])
    assert producer.flush(30) == 0
    [message] = read_all(scram, scram.topic("listener.telemetry.v1"), 1)
    assert TopicSerde.for_topic("listener.telemetry.v1").decode_value(message.value()) == example["value"]

    wrong = replace(scram, sasl_password="not-the-password")
    rejected = Producer(wrong, "scram-test", {"message.timeout.ms": 5000})
    rejected.produce(TopicSerde.for_topic("listener.telemetry.v1", wrong), example["key"], example["value"])
    assert rejected.flush(15) == 0  # the delivery failed (counted), it did not hang
    assert len(read_all(scram, scram.topic("listener.telemetry.v1"), 2, timeout_s=3)) == 1
