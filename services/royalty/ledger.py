"""Royalty's duplicate-play state, loaded from the play ledger off the poll loop.

When the group gives an instance play partitions, it needs what the ledger says about them
(every decided play id, each listener's paid time) before it may decide a play there. A
30-day window is millions of entries (``make bench-ledger``), minutes of reading: far more
than a rebalance callback may take. So the service pauses the new partitions, a
``LedgerLoad`` reads their ledger partitions in a thread of its own into fresh
``PartitionHistory`` objects, and the poll loop installs them and resumes the partitions when
it is done. Meanwhile the loop keeps polling (the group sees a live member) and keeps
following the reference topics; the paused partitions yield nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from kit.consumer import is_partition_eof, source_of
from kit.serde import DecodeError, TopicSerde
from kit.settings import KafkaSettings
from royalty.history import PartitionHistory
from royalty.rules import SegmentFacts

log = structlog.get_logger()

LOAD_TIMEOUT_S = 1_800.0  # a load that takes longer exits the process (its supervisor starts it again)


class LedgerLoadFailed(RuntimeError):
    """The ledger could not be read to its end; the process exits and is restarted."""


def wait_for_stable_offsets(kafka: KafkaSettings, group_id: str, plays_topic: str, partitions: list[int],
                            timeout_s: float) -> None:
    """Return once the group's committed offsets of these plays partitions are stable: a previous
    owner's transaction that was still open (its offsets and ledger entries pending) has committed
    or aborted, so its ledger entries are readable before the load reads to the end."""
    waiter = Consumer({**kafka.client_config(), "group.id": group_id, "isolation.level": "read_committed",
                       "enable.auto.commit": False})
    try:  # read_committed asks the coordinator for stable offsets only (it answers once none are pending)
        waiter.committed([TopicPartition(plays_topic, p) for p in partitions], timeout=timeout_s)
    finally:
        waiter.close()


def read_ledger(kafka: KafkaSettings, serde: TopicSerde, partitions: list[int],
                segments: Mapping[str, SegmentFacts], cancelled: Callable[[], bool] = lambda: False,
                timeout_s: float = LOAD_TIMEOUT_S) -> tuple[dict[int, PartitionHistory], int]:
    """Every committed entry of these ledger partitions, folded into one history per partition; and
    how many entries. A paid AI segment's time is its segment's listener's (from ``segments``,
    royalty's reference table: an erased listener's segments are gone, and so is their paid time)."""
    parts = {p: PartitionHistory() for p in partitions}
    reader = Consumer({**kafka.client_config(), "group.id": "royalty-ledger-loader",
                       "isolation.level": "read_committed", "enable.auto.commit": False,
                       "enable.partition.eof": True})
    try:
        reader.assign([TopicPartition(serde.topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end: set[int] = set()
        loaded, deadline = 0, time.monotonic() + timeout_s
        while len(at_end) < len(partitions):
            if cancelled():
                return parts, loaded
            if time.monotonic() > deadline:
                raise LedgerLoadFailed(f"ledger partitions {partitions} not read within {timeout_s:.0f}s")
            for msg in reader.consume(5000, 0.5):
                if is_partition_eof(msg):
                    at_end.add(source_of(msg)[1])
                if msg.error() is not None:
                    continue
                try:
                    entry = serde.decode_value(msg.value())
                except DecodeError as exc:  # skipping it could pay a replay of that play twice: stop
                    _, partition, offset = source_of(msg)
                    raise LedgerLoadFailed(f"{serde.topic} partition {partition} offset {offset} does not decode "
                                           f"({exc}); a ledger written before the schema registry needs "
                                           "migrating (locally: make clean)") from None
                if entry is None or entry["outcome"] == "DEAD_LETTERED":  # a dead letter decides nothing
                    continue
                part = parts[source_of(msg)[1]]
                part.decided(entry["play_id"])
                segment = segments.get(entry.get("segment_id") or "")
                if entry.get("heard_ms") and segment is not None:
                    start = entry["play_started_at"]
                    part.paid_time(segment.listener_id, start, start + entry["heard_ms"])
                loaded += 1
        return parts, loaded
    finally:
        reader.close()


class LedgerLoad:
    """One load of some ledger partitions, in a daemon thread; ``done`` once it ended either way."""

    def __init__(self, kafka: KafkaSettings, serde: TopicSerde, partitions: list[int],
                 segments: Mapping[str, SegmentFacts], erased: Mapping[str, int], stable: Callable[[], None],
                 timeout_s: float = LOAD_TIMEOUT_S) -> None:
        self.partitions = sorted(partitions)
        self.erased_at_start = dict(erased)  # erasures after this are applied to the load when it is installed
        self.timeout_s = timeout_s
        self.started = time.monotonic()
        self.finished: float | None = None
        self.parts: dict[int, PartitionHistory] = {}
        self.entries = 0
        self.error: BaseException | None = None
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(kafka, serde, segments, stable, timeout_s),
                                        name=f"ledger-load-{'-'.join(map(str, self.partitions))}", daemon=True)
        self._thread.start()

    @property
    def done(self) -> bool:
        return self.finished is not None

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def cancel(self) -> None:
        """The partitions were revoked: stop reading (the result is dropped)."""
        self._cancelled.set()

    @property
    def overdue(self) -> bool:
        """Still running a minute past its own deadline (stuck inside the client): the loop exits."""
        return not self.done and self.seconds > self.timeout_s + 60

    def _run(self, kafka: KafkaSettings, serde: TopicSerde, segments: Mapping[str, SegmentFacts],
             stable: Callable[[], None], timeout_s: float) -> None:
        try:
            stable()
            self.parts, self.entries = read_ledger(kafka, serde, self.partitions, segments,
                                                   self._cancelled.is_set, timeout_s)
        except BaseException as exc:  # handed to the poll loop, which exits the process with it
            log.error("ledger_load_failed", partitions=self.partitions, error=str(exc))
            self.error = exc
        finally:
            self.finished = time.monotonic()
