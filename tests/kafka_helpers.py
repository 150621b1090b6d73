"""Small readers used by integration tests to look at what is really on a topic."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from kit.settings import KafkaSettings


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
