"""What Entrain holds about one listener: the answer to ``GET /v1/me/export`` (a data subject's
access request, GDPR art. 15), read from where it is held, not from a copy.

Every topic that carries a listener is keyed by the pseudonymous listener id, so a listener's
records sit in one partition; the export computes it the way the producer's partitioner did
and reads that partition over the topic's retention:

* listener.telemetry.v1, listener.plays.v1, soundtrack.segments.v1, soundtrack.admissions.v1,
  listener.erasures.v1 (written by confluent-kafka: librdkafka's default partitioner, CRC-32 of the key bytes);
* soundtrack.requests.v1 (written by the Faust worker: aiokafka's, murmur2 like Java's);
* the soundtrack worker's state: the latest record for the listener on its compacted Faust
  changelog (``<app id>-listeners-changelog``, key JSON-encoded), in the telemetry partition.

Delivery's in-memory playlist is added by the endpoint. What is *not* held per listener is
listed in ``NOT_HELD`` with the reason, so the answer is complete, not just long.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from kit.consumer import is_partition_eof
from kit.serde import DecodeError, TopicSerde
from kit.settings import KafkaSettings

READ_TIMEOUT_S = 60.0
MAX_RECORDS = 20_000  # per topic: about 5.5 hours of 1 Hz telemetry; beyond it the answer says "truncated"
NOT_HELD = {
    "royalty.events.v1, royalty.play-ledger.v1": "royalty lines and the ledger name play ids, segments and rights "
                                                   "holders, never a listener",
    "watermark registry": "keyed by segment id; holds no listener or session id",
    "audio store": "files keyed by the audio's SHA-256; no listener id",
    "royalty's paid listening time": "kept in memory only, derived from the segments and plays listed here",
}


def crc32_partition(key: bytes, partitions: int) -> int:
    """librdkafka's default (consistent_random) partitioner for a non-empty key."""
    return zlib.crc32(key) % partitions


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The Java client's (and aiokafka's) default partitioner: murmur2, made positive."""
    m, r, length = 0x5BD1E995, 24, len(key)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(key[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length % 4
    if tail:
        rest = key[length - tail:]
        if tail >= 3:
            h ^= rest[2] << 16
        if tail >= 2:
            h ^= rest[1] << 8
        h ^= rest[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Source:
    logical: str
    what: str
    murmur2: bool = False  # written by the Faust worker (aiokafka) rather than confluent-kafka


SOURCES = (
    Source("listener.telemetry.v1", "heart rate, cadence and activity samples (health data)"),
    Source("listener.plays.v1", "plays the app reported"),
    Source("soundtrack.requests.v1", "segment requests the soundtrack worker made for the listener", murmur2=True),
    Source("soundtrack.segments.v1", "segments generated for the listener, with their provenance"),
    Source("soundtrack.admissions.v1", "admission decisions about the listener's sessions (refused at capacity)"),
    Source("listener.erasures.v1", "erasure requests"),
)


class Exporter:
    def __init__(self, kafka: KafkaSettings, changelog_topic: str) -> None:
        self.kafka, self.changelog_topic = kafka, changelog_topic
        self.serdes = {s.logical: TopicSerde.for_topic(s.logical, kafka) for s in SOURCES}

    def export(self, listener_id: str) -> dict[str, Any]:
        """Everything held on the topics about ``listener_id``. Blocking: run it off the event loop."""
        consumer = Consumer({**self.kafka.client_config(), "group.id": "soundtrack-delivery-export",
                             "enable.auto.commit": False, "enable.partition.eof": True,
                             "isolation.level": "read_committed"})
        try:
            now_ms = int(time.time() * 1000)
            topics: dict[str, Any] = {}
            telemetry_partition = 0
            for source in SOURCES:
                serde = self.serdes[source.logical]
                key = serde.encode_key({"listener_id": listener_id})
                count = len(consumer.list_topics(serde.topic, timeout=30).topics[serde.topic].partitions)
                partition = (murmur2_partition if source.murmur2 else crc32_partition)(key, count)
                if source.logical == "listener.telemetry.v1":
                    telemetry_partition = partition
                since = now_ms - serde.contract.retention_ms if serde.contract.retention_ms > 0 else 0
                values, truncated = self._read(consumer, serde.topic, partition, since, {key})
                records = [serde.decode_value(value) for value in values]
                topics[source.logical] = {"what": source.what, "retention_ms": serde.contract.retention_ms,
                                          "records": [r for r in records if r is not None], "truncated": truncated}
            state = self._state(consumer, listener_id, telemetry_partition)
        finally:
            consumer.close()
        return {"listener_id": listener_id, "exported_at": now_ms, "topics": topics,
                "soundtrack_state": state, "not_held": NOT_HELD}

    def _state(self, consumer: Consumer, listener_id: str, partition: int) -> dict[str, Any] | None:
        keys = {listener_id.encode(), json.dumps(listener_id).encode()}  # raw, or JSON as Faust writes it
        values, _ = self._read(consumer, self.changelog_topic, partition, 0, keys, keep_last=True)
        latest: bytes | None = values[-1] if values else None  # a tombstone (None) ends the state
        if latest is None:
            return None
        try:
            return dict(json.loads(latest))
        except (ValueError, TypeError):
            raise DecodeError(f"unreadable soundtrack state on {self.changelog_topic}") from None

    def _read(self, consumer: Consumer, topic: str, partition: int, since_ms: int, keys: set[bytes],
              keep_last: bool = False) -> tuple[list[Any], bool]:
        """Values of ``keys`` on one partition from ``since_ms`` (0: the beginning) to its end now: the
        first MAX_RECORDS (or with ``keep_last`` only the last), and whether any were left out. A topic
        or partition that does not exist (the worker never ran) holds nothing."""
        metadata = consumer.list_topics(topic, timeout=30).topics.get(topic)
        if metadata is None or metadata.error is not None or partition not in metadata.partitions:
            return [], False
        start = TopicPartition(topic, partition, since_ms) if since_ms > 0 else None
        if start is not None:
            [start] = consumer.offsets_for_times([start], timeout=30)
            if start.offset < 0:  # nothing that recent
                return [], False
        consumer.assign([start or TopicPartition(topic, partition, OFFSET_BEGINNING)])
        values: list[Any] = []
        deadline = time.monotonic() + READ_TIMEOUT_S
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if is_partition_eof(msg):
                    return values, False
                continue
            if msg.key() in keys:
                if keep_last:
                    values.clear()
                values.append(msg.value())
                if len(values) >= MAX_RECORDS:
                    return values, True
        raise TimeoutError(f"{topic} [{partition}] not read to its end within {READ_TIMEOUT_S:.0f}s")
