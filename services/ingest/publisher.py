"""Produce a batch through the kit's idempotent producer and await the broker's acks.

Delivery reports are served on the event loop itself: every request waiting for
its batch polls the producer between short sleeps, so callbacks run in the loop's
thread (no lock, no cross-thread wake-ups, no GIL hand-offs). The producer's
``message.timeout.ms`` equals the ack timeout, so when a request times out its
records have failed too: a 503 never hides a later delivery.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from confluent_kafka import KafkaError, Message

from kit.producer import Producer, QueueFull
from kit.serde import TopicSerde
from kit.settings import KafkaSettings

POLL_INTERVAL_S = 0.001


class Overloaded(Exception):
    """Too many records are waiting for the broker: retry after ``retry_after_s``."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"producer queue full; retry after {retry_after_s:.0f}s")
        self.retry_after_s = retry_after_s


class Unavailable(Exception):
    """The broker did not acknowledge the batch (unreachable or failing)."""


class _Batch:
    __slots__ = ("errors", "remaining")

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.errors: list[str] = []

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(err.str())
        self.remaining -= 1


class Publisher:
    def __init__(self, settings: KafkaSettings, service: str, ack_timeout_s: float, max_in_flight: int) -> None:
        self.ack_timeout_s = ack_timeout_s
        self.max_in_flight = max_in_flight
        self.producer = Producer(settings, service, {
            "message.timeout.ms": int(ack_timeout_s * 1000),
            "queue.buffering.max.messages": max_in_flight * 2,
        })

    async def publish(self, serde: TopicSerde, records: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        """Return once the broker acknowledged every record; raise Overloaded or Unavailable."""
        if not records:
            return
        if len(self.producer) + len(records) > self.max_in_flight:
            raise Overloaded(retry_after_s=1.0)
        batch = _Batch(len(records))
        try:
            for key, value in records:
                self.producer.produce(serde, key, value, on_delivery=batch.on_delivery, block_s=0)
        except QueueFull:
            raise Overloaded(retry_after_s=1.0) from None  # what was enqueued still completes
        deadline = time.monotonic() + self.ack_timeout_s + 1.0
        while batch.remaining > 0:
            self.producer.poll(0)
            if batch.remaining <= 0:
                break
            if time.monotonic() > deadline:
                raise Unavailable(f"the broker did not acknowledge within {self.ack_timeout_s:.0f}s")
            await asyncio.sleep(POLL_INTERVAL_S)
        if batch.errors:
            raise Unavailable(f"the broker rejected {len(batch.errors)} of {len(records)} records: {batch.errors[0]}")

    def close(self) -> None:
        self.producer.flush(self.ack_timeout_s)
