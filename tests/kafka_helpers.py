"""Small readers used by integration tests to look at what is really on a topic."""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import replace
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from kit.consumer import is_partition_eof
from kit.settings import STATE_DIR, KafkaSettings


def read_all(settings: KafkaSettings, topic: str, expected: int, timeout_s: float = 20.0) -> list[Any]:
    """Raw messages on a physical topic (read_committed), waiting until ``expected`` arrived."""
    consumer = Consumer({**settings.client_config(), "group.id": f"reader-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    consumer.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < expected and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            out.append(msg)
    consumer.close()
    return out


def committed(settings: KafkaSettings, group: str, topic: str, partitions: int) -> dict[int, int]:
    """A group's committed offsets on a topic, by partition."""
    consumer = Consumer({**settings.client_config(), "group.id": group})
    offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    consumer.close()
    return {tp.partition: tp.offset for tp in offsets if tp.offset >= 0}


def read_to_end(settings: KafkaSettings, topic: str, timeout_s: float = 300.0) -> list[Any]:
    """Every committed message on a physical topic, from its beginning to its end now."""
    consumer = Consumer({**settings.client_config(), "group.id": f"reader-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": True})
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    out: list[Any] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(at_end) < len(partitions):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{topic} not read to its end within {timeout_s:.0f}s")
        for msg in consumer.consume(10_000, 0.5):
            if msg.error() is None:
                out.append(msg)
            elif is_partition_eof(msg):
                at_end.add(int(msg.partition()))
    consumer.close()
    return out


def scram_client(settings: KafkaSettings, user: str, tls: bool = False) -> KafkaSettings:
    """Settings for ``user`` on the local broker's SCRAM listener (``tls``: the SASL_SSL one,
    trusting the local CA), with a fresh password set through the admin API (the plaintext
    listener's principal is a super user)."""
    from confluent_kafka.admin import AdminClient, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    password = secrets.token_urlsafe(16)
    upsert = UserScramCredentialUpsertion(user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096),
                                          password.encode())
    admin = AdminClient(settings.client_config())  # kept alive until the futures resolve
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result()
    port = settings.kafka_sasl_ssl_port if tls else settings.kafka_scram_port
    return replace(KafkaSettings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL" if tls else "SASL_PLAINTEXT",
        "KAFKA_SASL_USERNAME": user, "KAFKA_SASL_PASSWORD": password, "ENTRAIN_TOPIC_PREFIX": settings.topic_prefix,
        "KAFKA_SSL_CA_LOCATION": str(STATE_DIR / "kafka" / "tls" / "ca.pem") if tls else ""}),
        registry=settings.registry)
