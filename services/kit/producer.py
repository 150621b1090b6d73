"""The idempotent Kafka producer every service uses.

``enable.idempotence`` (acks=all, in-order, no duplicates from retries) is always
on. Every record gets a delivery report: the broker's acknowledgement (or its
failure) is counted in metrics and handed to the caller's callback, so callers
such as ingest can answer only after the broker acknowledged.

A failed delivery (timed out, too large, not authorised, ...) is also logged and
counted in ``failed``: a consumer loop compares it before committing, so an input
offset is never committed past a record whose output was lost (``raise_if_failed``).

Delivery reports run inside ``poll``/``flush``, in the calling thread; one thread
at a time polls a given Producer (each service thread has its own). Acknowledged
records are tallied in plain ints there and added to the Prometheus counter when the
poll returns: exact after every poll, without a locked increment per record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
from confluent_kafka import KafkaError, Message
from confluent_kafka import Producer as _RawProducer

from kit.observability import PRODUCE_ERRORS, RECORDS_PRODUCED
from kit.serde import TopicSerde
from kit.settings import KafkaSettings

log = structlog.get_logger()
DeliveryCallback = Callable[[KafkaError | None, Message], None]
Headers = list[tuple[str, str | bytes | None]]

DEFAULT_CONFIG = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 200_000,
    "message.timeout.ms": 30_000,
}


class QueueFull(RuntimeError):
    """The local producer queue stayed full for the whole wait: the broker is slow or away."""


class DeliveryFailed(RuntimeError):
    """A produced record was not acknowledged (its delivery report carried an error)."""


class Producer:
    """Produces Avro-encoded records (or raw bytes, for DLQs) with delivery reports."""

    def __init__(self, settings: KafkaSettings, service: str, config: dict[str, Any] | None = None) -> None:
        self.service = service
        self._producer = _RawProducer({**settings.client_config(), **DEFAULT_CONFIG, **(config or {})})
        self._counted: dict[str, DeliveryCallback] = {}
        self._tallies: list[tuple[Any, list[int]]] = []  # (produced counter, acks not yet added to it)
        self.failed = 0  # delivery reports with an error, since the start
        self.last_failure = ""

    def produce(
        self,
        serde: TopicSerde,
        key: dict[str, Any],
        value: dict[str, Any] | None,
        *,
        headers: Headers | None = None,
        on_delivery: DeliveryCallback | None = None,
        block_s: float = 5.0,
    ) -> None:
        """Encode and enqueue one record. Raises EncodeError (a bug) or QueueFull."""
        self.produce_raw(serde.topic, serde.encode_key(key), None if value is None else serde.value.encode(value),
                         headers=headers, on_delivery=on_delivery, block_s=block_s)

    def produce_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        headers: Headers | None = None,
        on_delivery: DeliveryCallback | None = None,
        block_s: float = 5.0,
    ) -> None:
        """Enqueue bytes as they are. When the local queue is full, serve delivery
        reports for up to ``block_s`` (backpressure), then raise QueueFull."""
        callback = self._callback(topic, on_delivery)
        deadline = None  # the clock is read only when the queue is full
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=callback)
                return
            except BufferError:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + block_s
                remaining = deadline - now
                if remaining <= 0:
                    raise QueueFull(f"producer queue full for {block_s}s while producing to {topic}") from None
                self.poll(min(0.05, remaining))

    def _callback(self, topic: str, user: DeliveryCallback | None) -> DeliveryCallback:
        counted = self._counted.get(topic)
        if counted is None:
            acked = [0]
            self._tallies.append((RECORDS_PRODUCED.labels(self.service, topic), acked))
            failed = PRODUCE_ERRORS.labels(self.service, topic)

            def count(err: KafkaError | None, msg: Message) -> None:
                if err is None:
                    acked[0] += 1
                    return
                failed.inc()
                self.failed += 1
                self.last_failure = f"{topic}: {err.str()} ({err.name()})"
                log.error("delivery_failed", topic=topic, error=err.str(), code=err.name(),
                          retriable=err.retriable(), size=len(msg.value() or b""))

            counted = self._counted[topic] = count
        if user is None:
            return counted

        def count_and_report(err: KafkaError | None, msg: Message) -> None:
            counted(err, msg)
            user(err, msg)

        return count_and_report

    def raise_if_failed(self, since: int) -> None:
        """Raise DeliveryFailed when a delivery failed after ``since`` (an earlier ``failed``)."""
        if self.failed > since:
            raise DeliveryFailed(f"{self.failed - since} produced record(s) were not acknowledged, last: "
                                 f"{self.last_failure}")

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery reports; returns how many events were served (0: none; librdkafka may
        hand many reports over as one event)."""
        served: int = self._producer.poll(timeout_s)
        if served:
            self._add_tallies()
        return served

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for every queued record's delivery report; returns how many are still queued."""
        left = int(self._producer.flush(timeout_s))
        self._add_tallies()
        return left

    def _add_tallies(self) -> None:
        for produced, acked in self._tallies:
            if acked[0]:
                produced.inc(acked[0])
                acked[0] = 0

    def reachable(self, timeout_s: float = 2.0) -> bool:
        """True when the cluster answers a metadata request within ``timeout_s``."""
        try:
            self._producer.list_topics(timeout=timeout_s)
            return True
        except Exception:
            return False

    def __len__(self) -> int:
        return len(self._producer)
