"""Royalty's reference data: works, consent history, segment provenance and erasures, kept in
memory from their topics (every partition, read_committed, from the beginning)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from kit.consent import ConsentHistory
from kit.consumer import is_partition_eof, source_of
from kit.contracts import contract
from kit.serde import DecodeError, TopicSerde
from kit.settings import KafkaSettings
from royalty.rules import InvalidReference, SegmentFacts, WorkShares

log = structlog.get_logger()

WORKS, CONSENT, SEGMENTS = "catalog.works.v1", "catalog.consent.v1", "soundtrack.segments.v1"
ERASURES = "listener.erasures.v1"


PLAY_HORIZON_MS = contract("listener.plays.v1").retention_ms  # ingest accepts no play started earlier
SWEEP_EVERY = 10_000


@dataclass
class ReferenceTables:
    """Works, consent and segments. Segments are bounded: one generated longer ago than the play
    horizon (ingest's acceptance window for plays) can no longer be played for pay, and is
    dropped in a sweep every ``SWEEP_EVERY`` new segments.

    An erasure of a listener drops every segment generated for them up to the erasure (a later
    record of one is ignored, also when the topics are read again after a restart), and lists
    the listener in ``erased`` (until the play horizon passes) and in ``newly_erased`` for the
    service to forget their paid time. Their plays of those segments are then unpaid at once
    (``listener_erased``), never held waiting for a segment that will not come back."""

    works: dict[str, WorkShares] = field(default_factory=dict)
    segments: dict[str, SegmentFacts] = field(default_factory=dict)
    consent: ConsentHistory = field(default_factory=ConsentHistory)
    erased: dict[str, int] = field(default_factory=dict)  # listener -> time of their latest erasure
    newly_erased: list[str] = field(default_factory=list)
    rejected: int = 0
    horizon_ms: int = PLAY_HORIZON_MS
    _added: int = 0

    def sweep(self, now_ms: int) -> int:
        """Drop segments past the play horizon (plus a day of clock slack); returns how many."""
        cutoff = now_ms - self.horizon_ms - 86_400_000
        old = [sid for sid, facts in self.segments.items() if facts.generated_at < cutoff]
        for sid in old:
            del self.segments[sid]
        self.erased = {listener: at for listener, at in self.erased.items() if at >= cutoff}
        return len(old)

    def erased_before(self, listener: str, at_ms: int) -> bool:
        """Was the listener erased at or after ``at_ms`` (so what they did then is gone)?"""
        return at_ms <= self.erased.get(listener, -1)

    def apply(self, logical_topic: str, key: dict[str, Any], value: dict[str, Any] | None, timestamp_ms: int,
              offset: int | None = None) -> None:
        """Fold one record into the tables (``offset`` orders consent records of one scope that share
        ``effective_from`` and ``updated_at``). Raises InvalidReference for a malformed one."""
        if logical_topic == WORKS:
            if value is None:
                self.works.pop(key["work_id"], None)
            else:
                self.works[value["work_id"]] = WorkShares.from_record(value)
        elif logical_topic == CONSENT:
            if value is None:
                self.consent.withdraw(key["rights_holder_id"], key["work_id"], timestamp_ms, offset)
            else:
                self.consent.add_record(value, offset)
        elif logical_topic == ERASURES:
            listener = key["listener_id"]
            at = max(int(value["requested_at"]) if value else 0, timestamp_ms)
            self.erased[listener] = max(at, self.erased.get(listener, 0))
            for sid in [s for s, facts in self.segments.items() if facts.listener_id == listener
                        and facts.requested_at <= at]:
                del self.segments[sid]
            self.newly_erased.append(listener)
        elif logical_topic == SEGMENTS and value is not None and value["segment_id"] not in self.segments:
            # First write wins, as in delivery: a replayed record of a segment id names the same audio
            # (inference never regenerates an existing segment), and what was delivered is what is paid.
            facts = SegmentFacts.from_record(value)
            if self.erased_before(facts.listener_id, facts.requested_at):
                return
            self.segments[value["segment_id"]] = facts
            self._added += 1
            if self._added % SWEEP_EVERY == 0:
                self.sweep(int(time.time() * 1000))


class TableFeed:
    """Follows the reference topics into ReferenceTables."""

    def __init__(self, kafka: KafkaSettings, tables: ReferenceTables) -> None:
        self.tables = tables
        self._serdes = {kafka.topic(t): (t, TopicSerde.for_topic(t, kafka))
                        for t in (WORKS, CONSENT, SEGMENTS, ERASURES)}
        self._consumer = Consumer({
            **kafka.client_config(), "group.id": "royalty-reference-reader", "enable.auto.commit": False,
            "isolation.level": "read_committed", "enable.partition.eof": True,
        })
        metadata = self._consumer.list_topics(timeout=30)
        self._partitions = [TopicPartition(topic, p, OFFSET_BEGINNING)
                            for topic in self._serdes for p in metadata.topics[topic].partitions]
        self._consumer.assign(self._partitions)
        self._at_end: set[tuple[str, int]] = set()

    def drain(self, max_s: float = 0.05) -> int:
        """Apply whatever has arrived (at most ``max_s`` of work); return how many records."""
        applied, deadline = 0, time.monotonic() + max_s
        while time.monotonic() < deadline:
            batch = self._consumer.consume(1000, 0)
            if not batch:
                break
            applied += self._handle(batch)
        return applied

    def catch_up(self, timeout_s: float = 60.0) -> None:
        """Read until every reference partition reported its end (partition EOF)."""
        deadline = time.monotonic() + timeout_s
        while len(self._at_end) < len(self._partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reference topics not caught up within {timeout_s}s")
            self._handle(self._consumer.consume(1000, 0.2))

    def _handle(self, batch: list[Any]) -> int:
        applied = 0
        for msg in batch:
            err = msg.error()
            if err is None:
                self._apply(msg)
                applied += 1
            elif is_partition_eof(msg):
                self._at_end.add(source_of(msg)[:2])
            else:
                log.warning("reference_consumer_error", error=str(err))
        return applied

    def _apply(self, msg: Any) -> None:
        topic, partition, offset = source_of(msg)
        logical, serde = self._serdes[topic]
        try:
            self.tables.apply(logical, serde.decode_key(msg.key()), serde.decode_value(msg.value()),
                              msg.timestamp()[1], offset)
        except (DecodeError, InvalidReference, KeyError) as exc:
            # The owning service's DLQ is where bad records of its topics go; royalty only skips them.
            self.tables.rejected += 1
            log.warning("reference_record_skipped", topic=topic, partition=partition, offset=offset, reason=str(exc))

    def close(self) -> None:
        self._consumer.close()
