"""Royalty's exactly-once loop: listener.plays.v1 -> royalty.events.v1 + royalty.play-ledger.v1.

One transactional producer per process (stable ``transactional.id`` per instance)
and one consumer in the ``royalty`` group (read_committed). Each batch of plays is
one transaction holding: every royalty line, one ledger entry per processed play
(written to the play's own partition number, so the ledger is co-partitioned with
the plays), any dead letters, and the consumer offsets
(``send_offsets_to_transaction``). Either all of it becomes visible or none of it.

* Abortable error: abort, roll back the batch's additions to the play history, rewind every
  assigned partition to its committed offset, continue.
* Fatal error (e.g. fenced by a newer instance with the same transactional id):
  raise; the process exits and its supervisor restarts it.
* A play whose inputs are not known yet (segment provenance, work) waits: its
  partition is paused and retried every ``wait_retry_s``; after ``max_wait_s`` the
  play goes to listener.plays.v1.dlq with the reason and a DEAD_LETTERED ledger entry, which
  does not count as seen: ``python -m royalty.replay`` (make replay-plays) produces royalty's
  dead letters back to listener.plays.v1 once the missing input exists, and they are paid
  then (once: the first PAID or UNPAID entry decides). Other
  partitions keep moving; the waiting one is held for at most ``max_wait_s``.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from kit.consumer import dlq_headers, is_fatal, source_of
from kit.observability import RECORDS_CONSUMED, RECORDS_DEAD_LETTERED
from kit.serde import DecodeError, TopicSerde
from kit.settings import KafkaSettings, ServiceSettings, group_membership
from royalty import reference_check
from royalty.history import PlayHistory
from royalty.ledger import LedgerLoad, LedgerLoadFailed, wait_for_stable_offsets
from royalty.rates import DEFAULT_RATE_CARD, RateCard, RateCardMissing
from royalty.rules import Paid, Play, Unpaid, Waiting, decide, line_record, position, remember
from royalty.tables import PLAY_HORIZON_MS, SWEEP_EVERY, ReferenceTables, TableFeed

log = structlog.get_logger()
SERVICE = "royalty"
PLAYS, EVENTS, LEDGER = "listener.plays.v1", "royalty.events.v1", "royalty.play-ledger.v1"

STALL_CHECK_S = 10.0
STALLS = Counter("entrain_royalty_stalled_partitions_total",
                 "Assigned partitions that never started fetching, counted when the process exits to restart.")


class StalledAssignment(RuntimeError):
    """Assigned partitions never started fetching; a restart rejoins the group and fetches them."""
PLAYS_PROCESSED = Counter("entrain_royalty_plays_total", "Plays processed, by outcome and reason.",
                          ["outcome", "reason"])
AMOUNT = Counter("entrain_royalty_amount_micros_total", "Money attributed in royalty lines (micro-units).",
                 ["currency"])
TRANSACTIONS = Counter("entrain_royalty_transactions_total", "Transactions by result.", ["result"])
COMMIT_SECONDS = Histogram("entrain_royalty_commit_seconds", "Time to commit one transaction.",
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
STALLS = Counter("entrain_royalty_stalls_total", "Steps that outlived their limit (the process exits and restarts).")
ERASURES_APPLIED = Counter("entrain_royalty_erasures_total",
                           "Listener erasures applied (their segments and paid time forgotten).")
PAID_SECONDS = Counter("entrain_royalty_ai_paid_seconds_total",
                       "Listening time of AI segments paid (the per-minute tariff's measure).")
WAITING = Gauge("entrain_royalty_waiting_partitions", "Play partitions paused waiting for inputs.")
LOADING = Gauge("entrain_royalty_loading_partitions", "Play partitions paused while their ledger loads.")
LEDGER_LOAD_SECONDS = Histogram("entrain_royalty_ledger_load_seconds",
                                "Time to load the ledger of newly assigned partitions (off the poll loop).",
                                buckets=(0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800))
LOOP_SECONDS = Histogram("entrain_royalty_loop_seconds", "One turn of the poll loop (poll, batch, commit).",
                         buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))


@dataclass(frozen=True)
class RoyaltySettings:
    instance_id: str
    group_id: str = "royalty"
    batch_max: int = 500
    wait_retry_s: float = 2.0
    max_wait_s: float = 60.0
    transactional: bool = True

    @classmethod
    def from_env(cls, kafka: KafkaSettings) -> RoyaltySettings:
        return cls(
            instance_id=os.environ.get("ENTRAIN_ROYALTY_INSTANCE", socket.gethostname()),
            group_id=os.environ.get("ENTRAIN_ROYALTY_GROUP", kafka.group("royalty")),
            batch_max=int(os.environ.get("ENTRAIN_ROYALTY_BATCH_MAX", "500")),
            wait_retry_s=float(os.environ.get("ENTRAIN_ROYALTY_WAIT_RETRY_S", "2")),
            max_wait_s=float(os.environ.get("ENTRAIN_ROYALTY_MAX_WAIT_S", "60")),
        )


STALL_EXIT_S = 45.0  # the commit's own timeouts add up to 40 s


class Watchdog:
    """Exits the process when a guarded step outlives its time limit.

    librdkafka's ``send_offsets_to_transaction`` can block forever, past its timeout, when the
    group coordinator it cached went away (a broker restart): confluentinc/librdkafka#5456 and
    #5511. The only way out is a new client, so the process exits and its supervisor starts it
    again; the unfinished transaction is aborted when the new instance (same transactional id)
    initialises, so exactly-once holds.
    """

    def __init__(self, limit_s: float, exit: Callable[[int], object] = os._exit) -> None:
        self.limit_s, self._exit = limit_s, exit
        self._step: tuple[str, float] | None = None
        threading.Thread(target=self._watch, name="watchdog", daemon=True).start()

    @contextmanager
    def guard(self, step: str) -> Iterator[None]:
        self._step = (step, time.monotonic())
        try:
            yield
        finally:
            self._step = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(5.0, self.limit_s / 4))
            step = self._step
            if step is not None and time.monotonic() - step[1] > self.limit_s:
                log.error("step_stalled_exiting", step=step[0], seconds=round(time.monotonic() - step[1]))
                STALLS.inc()
                self._exit(70)


class _Abort(Exception):
    """The transaction must be aborted and the batch retried."""


@dataclass
class LoopStats:
    """What the loop did, for logs and benchmarks; commit times keep the latest 10,000."""

    plays: int = 0
    transactions: int = 0
    loads: int = 0  # ledger loads installed, their entries and seconds, and the longest loop turn meanwhile
    loaded_entries: int = 0
    load_s: float = 0.0
    turns_while_loading: int = 0
    longest_turn_while_loading_s: float = 0.0
    aborts: int = 0
    first_batch_at: float | None = None
    last_batch_at: float | None = None
    commit_ms: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))


@dataclass
class _Batch:
    next_offsets: dict[int, int] = field(default_factory=dict)
    blocked: dict[int, int] = field(default_factory=dict)


class RoyaltyProcessor:
    def __init__(self, kafka: KafkaSettings, settings: RoyaltySettings, rates: RateCard) -> None:
        self.kafka, self.settings, self.rates = kafka, settings, rates
        self.plays_topic = kafka.topic(PLAYS)
        self.serdes = {name: TopicSerde.for_topic(name, kafka) for name in (PLAYS, EVENTS, LEDGER)}
        self.dlq_topic = kafka.topic(PLAYS + ".dlq")
        self.tables = ReferenceTables()
        self.feed = TableFeed(kafka, self.tables)
        self.history = PlayHistory()  # decided play ids and paid time, for the assigned partitions
        self._decided = 0
        self._waiting_since: dict[tuple[int, int], float] = {}
        self._paused_until: dict[int, float] = {}
        self._stalled_since: float | None = None
        self._loading: LedgerLoad | None = None
        self._held_back: dict[int, int] = {}  # loading partition -> first offset fetched before its pause took
        self._stopping = False
        self.watchdog = Watchdog(STALL_EXIT_S)
        self.ready = False
        self.stats = LoopStats()
        producer_config: dict[str, Any] = {
            **kafka.client_config(), "linger.ms": 5, "compression.type": "lz4", "enable.idempotence": True,
        }
        if settings.transactional:
            producer_config |= {"transactional.id": f"royalty-{settings.instance_id}",
                                "transaction.timeout.ms": 60_000}
        self.producer = Producer(producer_config)
        self.consumer = Consumer({
            **kafka.client_config(), "group.id": settings.group_id, "isolation.level": "read_committed",
            "enable.auto.commit": False, "auto.offset.reset": "earliest", "enable.partition.eof": False,
            **group_membership(SERVICE, instance_id=settings.instance_id),
        })

    # -- lifecycle ---------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        self._stopping = True

    def run(self, idle_exit_s: float | None = None) -> None:
        """Process plays until stopped (or idle for ``idle_exit_s``, for tests and benchmarks)."""
        if self.settings.transactional:
            self.producer.init_transactions(30)
        self.feed.catch_up()
        self._check_co_partitioning()
        self.ready = True
        log.info("royalty_started", works=len(self.tables.works), segments=len(self.tables.segments),
                 transactional=self.settings.transactional)
        self.consumer.subscribe([self.plays_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)
        idle_since = last_check = time.monotonic()
        try:
            while not self._stopping:
                turn = time.monotonic()
                self._finish_loading()
                self._resume_due()
                self.feed.drain()
                self._apply_erasures()
                messages = [m for m in self.consumer.consume(self.settings.batch_max, 0.2)
                            if self._usable(m) and not self._held(m)]
                if messages:
                    self._process(messages)
                    idle_since = time.monotonic()
                elif self._loading is not None:
                    idle_since = time.monotonic()  # not idle: waiting for the ledger
                elif idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                    break
                elif time.monotonic() - max(idle_since, last_check) > STALL_CHECK_S:
                    last_check = time.monotonic()
                    self._restart_unstarted_partitions()
                self._turned(time.monotonic() - turn)
        finally:
            self.consumer.close()
            self.feed.close()
            self.producer.flush(10)

    def _check_co_partitioning(self) -> None:
        topics = self.consumer.list_topics(timeout=30).topics
        plays, ledger = topics[self.plays_topic], topics[self.serdes[LEDGER].topic]
        if len(plays.partitions) != len(ledger.partitions):
            raise RuntimeError(f"{ledger.topic} must have as many partitions as {self.plays_topic} "
                               f"({len(ledger.partitions)} != {len(plays.partitions)}): the ledger is co-partitioned")

    def _usable(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        if is_fatal(err):
            raise KafkaException(err)  # fenced: a new instance (restarted) aborts what this one left open
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer_error", error=str(err))
        return False

    # -- one transaction -----------------------------------------------------------------

    def _process(self, messages: list[Message]) -> None:
        batch = _Batch()
        transactional = self.settings.transactional
        try:
            if transactional:
                self.producer.begin_transaction()
            for msg in messages:
                _, partition, offset = source_of(msg)
                if partition in batch.blocked:
                    continue
                if self._handle(msg):
                    batch.next_offsets[partition] = offset + 1
                else:
                    batch.blocked[partition] = offset
            offsets = [TopicPartition(self.plays_topic, p, o)
                       for p, o in {**batch.next_offsets, **batch.blocked}.items()]
            started = time.perf_counter()
            if transactional:
                with self.watchdog.guard("commit"):
                    self.producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), 20)
                    self.producer.commit_transaction(20)
            else:  # at-least-once, for the benchmark's baseline
                self.producer.flush(30)
                self.consumer.commit(offsets=offsets, asynchronous=False)
            commit_s = time.perf_counter() - started
            self.history.commit()
            self._sweep_paid_time(len(messages))
            COMMIT_SECONDS.observe(commit_s)
            TRANSACTIONS.labels("committed").inc()
            self.stats.commit_ms.append(commit_s * 1000)
            self.stats.transactions += 1
            self.stats.plays += sum(1 for m in messages if source_of(m)[1] not in batch.blocked)
            self.stats.first_batch_at = self.stats.first_batch_at or started
            self.stats.last_batch_at = time.perf_counter()
        except KafkaException as exc:
            error = exc.args[0]
            if not transactional or not error.txn_requires_abort():
                raise  # fatal (fenced, misconfigured): exit and be restarted
            self._abort(error)
            return
        for partition, offset in batch.blocked.items():
            tp = TopicPartition(self.plays_topic, partition, offset)
            self.consumer.seek(tp)
            self.consumer.pause([tp])
            self._paused_until[partition] = time.monotonic() + self.settings.wait_retry_s
        WAITING.set(len(self._paused_until))

    def _abort(self, error: KafkaError) -> None:
        log.warning("transaction_aborted", error=str(error))
        self.producer.abort_transaction(30)
        TRANSACTIONS.labels("aborted").inc()
        self.stats.aborts += 1
        self.history.rollback()
        assignment = self.consumer.assignment()
        for tp in self.consumer.committed(assignment, timeout=30):
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def _apply_erasures(self) -> None:
        """Between batches: forget the paid time of listeners erased since the last loop."""
        while self.tables.newly_erased:
            self.history.forget(self.tables.newly_erased.pop())
            ERASURES_APPLIED.inc()

    def _sweep_paid_time(self, processed: int) -> None:
        """Every SWEEP_EVERY plays, forget paid time older than the play horizon (plus a day of slack)."""
        before, self._decided = self._decided, self._decided + processed
        if before // SWEEP_EVERY != self._decided // SWEEP_EVERY:
            self.history.drop_paid_before(int(time.time() * 1000) - PLAY_HORIZON_MS - 86_400_000)

    def _resume_due(self) -> None:
        now = time.monotonic()
        due = [p for p, until in self._paused_until.items() if until <= now]
        if due:
            self.consumer.resume([TopicPartition(self.plays_topic, p) for p in due])
            for p in due:
                del self._paused_until[p]
            WAITING.set(len(self._paused_until))

    # -- one play ----------------------------------------------------------------------

    def _handle(self, msg: Message) -> bool:
        """Produce what one play yields into the open transaction; False if it must wait."""
        RECORDS_CONSUMED.labels(SERVICE, self.plays_topic).inc()
        serde = self.serdes[PLAYS]
        try:
            serde.decode_key(msg.key())
            value = serde.decode_value(msg.value())
            if value is None:
                raise DecodeError("play record is a tombstone")
        except DecodeError as exc:
            self._dead_letter(msg, "undecodable", str(exc), None)
            return True
        play = Play.from_record(value)
        try:
            decision = self._decide(play, msg)
        except RateCardMissing as exc:
            self._dead_letter(msg, "invalid", str(exc), play)
            return True
        if isinstance(decision, Waiting):
            self.feed.drain(max_s=0.5)  # the input may just have arrived
            decision = self._decide(play, msg)
        if isinstance(decision, Waiting):
            key = source_of(msg)[1:]
            since = self._waiting_since.setdefault(key, time.monotonic())
            if time.monotonic() - since < self.settings.max_wait_s:
                return False
            del self._waiting_since[key]
            self._dead_letter(msg, "invalid", f"{decision.reason} after waiting {self.settings.max_wait_s:.0f}s",
                              play)
            return True
        self._waiting_since.pop(source_of(msg)[1:], None)
        now = int(time.time() * 1000)
        if isinstance(decision, Paid):
            events = self.serdes[EVENTS]
            for line in decision.lines:
                self.producer.produce(events.topic, key=events.encode_key({"rights_holder_id": line.rights_holder_id}),
                                      value=events.encode_value(line_record(play, decision, line, now)))
            self._record(msg, play, "PAID", None, decision)
        elif isinstance(decision, Unpaid):
            log.info("play_not_paid", play_id=play.play_id, reason=decision.reason)
            if decision.reason != "duplicate_play":  # the first entry for this play id stays the ledger's
                self._record(msg, play, "UNPAID", decision.reason, None)
            else:
                PLAYS_PROCESSED.labels("UNPAID", decision.reason).inc()
        remember(self.history, play, decision, source_of(msg)[1])
        self.producer.poll(0)
        return True

    def _decide(self, play: Play, msg: Message) -> Paid | Unpaid | Waiting:
        _, partition, offset = source_of(msg)
        return decide(play, self.rates, self.tables.works, self.tables.segments, self.tables.consent, self.history,
                      position=position(partition, offset), erased=self.tables.erased_before)

    def _record(self, msg: Message, play: Play, outcome: str, reason: str | None, paid: Paid | None) -> None:
        ledger = self.serdes[LEDGER]
        _, partition, offset = source_of(msg)
        total = paid.total_micros if paid else 0
        timed = paid if paid is not None and play.content_kind == "AI_SEGMENT" else None
        entry = {
            "play_id": play.play_id, "outcome": outcome, "reason": reason, "source_partition": partition,
            "source_offset": offset, "total_micros": total,
            "currency": paid.rate.currency if paid else None, "rate_card_id": paid.rate.id if paid else None,
            "line_count": len(paid.lines) if paid else 0, "play_started_at": play.started_at,
            "processed_at": int(time.time() * 1000), "segment_id": play.segment_id,
            "heard_ms": timed.heard_ms if timed else None, "paid_ms": timed.paid_ms if timed else None,
        }
        self.producer.produce(ledger.topic, key=ledger.encode_key({"play_id": play.play_id}),
                              value=ledger.encode_value(entry), partition=partition)
        if paid is not None:
            AMOUNT.labels(paid.rate.currency).inc(total)
            if timed:
                PAID_SECONDS.inc(timed.paid_ms / 1000)
        PLAYS_PROCESSED.labels(outcome, reason or "").inc()

    def _dead_letter(self, msg: Message, reason_class: str, reason: str, play: Play | None) -> None:
        topic, partition, offset = source_of(msg)
        headers = dlq_headers(topic, partition, offset, SERVICE, reason_class, reason)
        self.producer.produce(self.dlq_topic, key=msg.key(), value=msg.value(), headers=headers)
        RECORDS_DEAD_LETTERED.labels(SERVICE, topic, reason_class).inc()
        log.warning("play_dead_lettered", partition=partition, offset=offset, reason=reason)
        if play is not None:
            self._record(msg, play, "DEAD_LETTERED", reason, None)
        else:
            PLAYS_PROCESSED.labels("DEAD_LETTERED", reason_class).inc()

    # -- rebalances: the ledger follows the assignment -----------------------------------

    def _restart_unstarted_partitions(self) -> None:
        """Assigned partitions that never started fetching: seek them to their committed offsets,
        and if that does not start them by the next check, exit for the supervisor to restart us.

        Seen in the two-instance crash test: after a broker restart the committed-offset fetch of
        a new assignment failed with NOT_COORDINATOR ("Failed to fetch committed offsets for 0
        partition(s)") and librdkafka never retried it, so the partitions sat assigned and idle
        (a seek then fails with "Erroneous state"). A fresh process rejoins and fetches them;
        exactly-once holds across the exit like across any crash. Checked every STALL_CHECK_S
        without a record."""
        loading = self._loading.partitions if self._loading is not None else []
        assignment = [tp for tp in self.consumer.assignment()
                      if tp.partition not in self._paused_until and tp.partition not in loading]
        unstarted = [tp for tp in self.consumer.position(assignment) if tp.offset < 0] if assignment else []
        # An empty partition has no position either (nothing consumed yet): only one with records
        # to fetch can be stalled. Seen on a fresh cluster whose plays topic was still empty.
        unstarted = [tp for tp in unstarted if self._has_records(tp)]
        if not unstarted:
            self._stalled_since = None
            return
        numbers = sorted(tp.partition for tp in unstarted)
        if self._stalled_since is not None:
            STALLS.inc(len(unstarted))
            log.error("stalled_partitions_exiting", partitions=numbers,
                      stalled_s=round(time.monotonic() - self._stalled_since, 1))
            raise StalledAssignment(f"partitions {numbers} assigned but never fetched; restarting")
        self._stalled_since = time.monotonic()
        try:
            for tp in self.consumer.committed(unstarted, timeout=10):
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0
                                                  else OFFSET_BEGINNING))
            log.warning("stalled_partitions_seeked", partitions=numbers)
        except KafkaException as exc:
            log.warning("stalled_partitions_not_seeked", partitions=numbers, error=str(exc))

    def _has_records(self, tp: TopicPartition) -> bool:
        try:
            low, high = self.consumer.get_watermark_offsets(tp, timeout=2, cached=False)
        except KafkaException:
            return True  # cannot tell: treat it as stalled, as before
        return bool(high > low)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Take the partitions paused; their ledger loads in a thread and ``_finish_loading`` resumes
        them (the rebalance protocol is eager: ``partitions`` is the whole new assignment)."""
        numbers = sorted(tp.partition for tp in partitions)
        consumer.assign(partitions)
        if partitions:
            consumer.pause(partitions)
            self._loading = LedgerLoad(
                self.kafka, self.serdes[LEDGER], numbers, self.tables.segments, self.tables.erased,
                lambda: wait_for_stable_offsets(self.kafka, self.settings.group_id, self.plays_topic, numbers, 60))
            LOADING.set(len(numbers))
        log.info("partitions_assigned", partitions=numbers, ledger="loading")

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {tp.partition for tp in partitions}
        if self._loading is not None:
            self._loading.cancel()
            self._loading = None
            self._held_back.clear()
            LOADING.set(0)
        self.history.drop_partitions(revoked)
        for p in revoked:
            self._paused_until.pop(p, None)
        self._waiting_since = {k: v for k, v in self._waiting_since.items() if k[0] not in revoked}
        log.info("partitions_revoked", partitions=sorted(revoked))

    def _held(self, msg: Message) -> bool:
        """A record of a partition whose ledger is loading (fetched before its pause took): not
        processed now; the partition is sought back to it when it resumes."""
        if self._loading is None:
            return False
        _, partition, offset = source_of(msg)
        if partition not in self._loading.partitions:
            return False
        self._held_back[partition] = min(offset, self._held_back.get(partition, offset))
        return True

    def _finish_loading(self) -> None:
        """Install a finished ledger load and resume its partitions; a failed one exits the process."""
        load = self._loading
        if load is not None and load.overdue:
            raise LedgerLoadFailed(f"ledger load of partitions {load.partitions} stuck for {load.seconds:.0f}s")
        if load is None or not load.done:
            return
        self._loading = None
        LOADING.set(0)
        if load.error is not None:
            raise load.error
        erased, before = self.tables.erased, load.erased_at_start
        for partition, part in load.parts.items():
            # Erased while the ledger was read (an erasure before that already left no segments to
            # rebuild from; paid time earned after it must stay, or the same minutes could pay twice).
            for listener in [x for x in part.paid if erased.get(x, -1) > before.get(x, -1)]:
                del part.paid[listener]
            self.history.install(partition, part)
        self.history.commit()
        for partition, offset in self._held_back.items():
            self.consumer.seek(TopicPartition(self.plays_topic, partition, offset))
        self._held_back.clear()
        self.consumer.resume([TopicPartition(self.plays_topic, p) for p in load.partitions])
        LEDGER_LOAD_SECONDS.observe(load.seconds)
        self.stats.loads += 1
        self.stats.loaded_entries += load.entries
        self.stats.load_s += load.seconds
        log.info("ledger_loaded", partitions=load.partitions, ledger_entries=load.entries,
                 seconds=round(load.seconds, 2))

    def _turned(self, seconds: float) -> None:
        LOOP_SECONDS.observe(seconds)
        if self._loading is not None:
            self.stats.turns_while_loading += 1
            self.stats.longest_turn_while_loading_s = max(self.stats.longest_turn_while_loading_s, seconds)


def main() -> None:
    from kit.logs import configure_logging
    from kit.observability import HealthServer

    configure_logging(SERVICE)
    kafka = KafkaSettings.from_env()
    rate_card = Path(os.environ.get("ENTRAIN_ROYALTY_RATE_CARD", DEFAULT_RATE_CARD))
    processor = RoyaltyProcessor(kafka, RoyaltySettings.from_env(kafka), RateCard.load(rate_card))
    health = HealthServer.for_service(ServiceSettings.from_env("royalty", 9105)).start()
    health.add_ready_check("reference_data_loaded", lambda: processor.ready)
    checker, checker_thread = reference_check.start(kafka, processor.settings.group_id)
    signal.signal(signal.SIGTERM, processor.stop)
    signal.signal(signal.SIGINT, processor.stop)
    processor.run()
    checker.stop()
    checker_thread.join(10)
    health.stop()
