"""The provenance registry: generation records by watermark payload, shared by every instance.

The records live on the compacted topic ``watermark.registry.v1`` (kept forever), which the
watermark service writes once per verified segment. Every process that looks payloads up (the
watermark service's detection API, the detector CLI, the demo) materialises the topic into a
local SQLite index and answers from it, so two instances, or a detection API on another pod,
see the same segments. The topic is the truth; the index is a cache of it.

* ``RegistryIndex(kafka).start()`` follows the topic from its beginning in a daemon thread
  (or, with a file index at ENTRAIN_WATERMARK_REGISTRY_INDEX, from the offsets stored with it);
  ``caught_up`` is set once it has read to the end it saw at start.
* ``lookup(key_id, payload_hex)`` is an indexed query; it may return more than one record (a
  32-bit payload collision), which the detector reports as candidates.
* ``publish(...)`` produces a record (``RegistryWriter``); the writer's own index learns it from
  the topic, like everyone else's.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from kit.consumer import is_partition_eof
from kit.producer import Producer
from kit.serde import DecodeError, TopicSerde
from kit.settings import KafkaSettings

log = structlog.get_logger()
TOPIC = "watermark.registry.v1"
RECORD_FIELDS = ("segment_id", "request_id", "sequence", "params", "provenance", "generated_at")


class RegistryIndex:
    """A local, indexed copy of watermark.registry.v1."""

    def __init__(self, kafka: KafkaSettings, path: Path | str | None = None) -> None:
        self.kafka = kafka
        self.serde = TopicSerde.for_topic(TOPIC, kafka)
        where = path or os.environ.get("ENTRAIN_WATERMARK_REGISTRY_INDEX") or ":memory:"
        self._db = sqlite3.connect(str(where), timeout=30, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS segments (key_id TEXT, payload_hex TEXT, segment_id TEXT, "
                             "record TEXT, PRIMARY KEY (key_id, payload_hex, segment_id))")
            self._db.execute("CREATE TABLE IF NOT EXISTS offsets (topic TEXT, partition INTEGER, next INTEGER, "
                             "PRIMARY KEY (topic, partition))")
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RegistryIndex:
        self._thread = threading.Thread(target=self._follow, name="registry-index", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def wait(self, timeout_s: float = 60.0) -> bool:
        """Block until the index has read the topic to the end it saw at start."""
        return self.caught_up.wait(timeout_s)

    def lookup(self, key_id: str, payload_hex: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT record FROM segments WHERE key_id = ? AND payload_hex = ?",
                                    (key_id, payload_hex)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM segments").fetchone()[0])

    def _stored_offsets(self) -> dict[int, int]:
        with self._lock:
            rows = self._db.execute("SELECT partition, next FROM offsets WHERE topic = ?",
                                    (self.serde.topic,)).fetchall()
        return {int(p): int(n) for p, n in rows}

    def _apply(self, messages: list[Any]) -> None:
        rows, offsets = [], {}
        for msg in messages:
            offsets[int(msg.partition() or 0)] = int(msg.offset() or 0) + 1
            try:
                key = self.serde.decode_key(msg.key())
                value = self.serde.decode_value(msg.value())
            except DecodeError as exc:  # only the watermark service writes here; skip, loudly
                log.error("registry_record_undecodable", reason=str(exc), partition=msg.partition(),
                          offset=msg.offset())
                continue
            rows.append((key["key_id"], key["payload_hex"], key["segment_id"],
                         None if value is None else json.dumps(value, sort_keys=True)))
        with self._lock, self._db:
            for key_id, payload, segment, record in rows:
                if record is None:  # a tombstone (e.g. a record withdrawn by an operator)
                    self._db.execute("DELETE FROM segments WHERE key_id = ? AND payload_hex = ? AND segment_id = ?",
                                     (key_id, payload, segment))
                else:
                    self._db.execute("INSERT OR REPLACE INTO segments VALUES (?, ?, ?, ?)",
                                     (key_id, payload, segment, record))
            self._db.executemany("INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)",
                                 [(self.serde.topic, p, n) for p, n in offsets.items()])

    @property
    def healthy(self) -> bool:
        """Caught up once, and still following (what the detection API's readiness reports)."""
        return self.caught_up.is_set() and self._thread is not None and self._thread.is_alive()

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow_once()
            except Exception as exc:  # a registry or broker outage, a full disk: log, wait, read on
                log.error("registry_index_failed", error=f"{type(exc).__name__}: {exc}")
                self._stop.wait(5)

    def _follow_once(self) -> None:
        """Follow the topic from the stored offsets (the beginning without any) until stopped."""
        consumer = Consumer({**self.kafka.client_config(), "group.id": f"registry-index-{uuid.uuid4().hex}",
                             "enable.auto.commit": False, "enable.partition.eof": True,
                             "auto.offset.reset": "earliest",  # a stored offset past the end: read it all
                             "isolation.level": "read_committed"})
        try:
            while not self._stop.is_set():  # the topic may not answer yet (a broker restarting)
                try:
                    partitions = consumer.list_topics(self.serde.topic, timeout=10).topics[self.serde.topic].partitions
                    if partitions:
                        break
                except Exception as exc:
                    log.warning("registry_topic_unavailable", error=str(exc))
                time.sleep(1)
            if self._stop.is_set():
                return
            stored = self._stored_offsets()
            consumer.assign([TopicPartition(self.serde.topic, p, stored.get(p, OFFSET_BEGINNING)) for p in partitions])
            at_end: set[int] = set()
            while not self._stop.is_set():
                batch = consumer.consume(1000, 0.5)
                good = [m for m in batch if m.error() is None]
                if good:
                    self._apply(good)
                for msg in batch:
                    if msg.error() is not None and is_partition_eof(msg):
                        at_end.add(int(msg.partition() or 0))
                if not self.caught_up.is_set() and len(at_end) == len(partitions):
                    self.caught_up.set()
                    log.info("registry_index_caught_up", records=self.count())
        finally:
            consumer.close()


class RegistryWriter:
    """Publishes generation records to watermark.registry.v1."""

    def __init__(self, kafka: KafkaSettings, producer: Producer) -> None:
        self.serde = TopicSerde.for_topic(TOPIC, kafka)
        self.producer = producer

    def publish(self, key_id: str, payload_hex: str, segment: dict[str, Any]) -> None:
        record = {k: segment[k] for k in RECORD_FIELDS} | {"registered_at": int(time.time() * 1000)}
        self.producer.produce(self.serde, {"key_id": key_id, "payload_hex": payload_hex,
                                           "segment_id": segment["segment_id"]}, record)
