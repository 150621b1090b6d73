"""The consumer loop every plain-Kafka service runs.

poll -> decode -> handle -> (periodically) flush the producer, then commit.

* A record whose bytes do not decode, or that the handler rejects by raising
  ``InvalidRecord``, goes to ``<topic>.dlq`` with its original key and value bytes
  and headers naming the reason, the source topic/partition/offset and the
  service. The partition keeps moving.
* Any other exception is a bug: the loop stops without committing the failed
  record, so it is consumed again after the fix.
* Offsets are committed only for records that were handled, and only after the
  producer flushed everything the handler (or the DLQ) produced for them *and every
  delivery report came back without error*, so no output is lost on a crash
  (at-least-once; handlers are idempotent). A failed delivery (timeout, record too
  large, not authorised) stops the loop with DeliveryFailed and commits nothing more:
  the records are consumed again after a restart (or the fix), never skipped.
* SIGTERM/SIGINT stop the loop after the current record; it commits and closes.
* A consumer that librdkafka declares fatally failed (a static member fenced by "another
  consumer with the same group.instance.id", which after a broker restart is usually its own
  earlier session: librdkafka #3437) is closed and replaced by a new one that joins again; its
  uncommitted records are consumed again (idempotent handlers). Fenced again and again (two
  processes really share an ``ENTRAIN_INSTANCE_ID``), the loop raises instead.
* With ``deadline_of`` the loop holds up to ``hold`` decoded records across polls and serves
  them earliest deadline first (``kit.deadlines``: late work last, superseded versions skipped
  with ``version_of``), committing per partition only below the lowest offset still held.
  ``check`` judges a record's content before it is held: an invalid record is dead-lettered at
  once, so it can neither replace a valid version of its position nor be skipped unreported
  when a newer version replaces it.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, cast

import structlog
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, TopicPartition

from kit.deadlines import DeadlineQueue
from kit.observability import (
    CONSUMER_LAG,
    CONSUMER_REJOINS,
    PROCESSING_SECONDS,
    RECORDS_CONSUMED,
    RECORDS_DEAD_LETTERED,
    RECORDS_HELD,
    RECORDS_SUPERSEDED,
)
from kit.producer import DeliveryFailed, Headers, Producer
from kit.serde import DecodeError, TopicSerde
from kit.settings import KafkaSettings, group_membership

log = structlog.get_logger()
REJOINS_ALLOWED, REJOIN_WINDOW_S = 3, 300.0  # more fatal errors than this in the window: raise


class InvalidRecord(ValueError):
    """The record decoded but its content is unacceptable; it goes to the DLQ with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Record:
    """A decoded record with where it came from."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: dict[str, Any]
    value: dict[str, Any] | None
    headers: tuple[tuple[str, str | bytes | None], ...] = ()


Handler = Callable[[Record], None]
# Micro-batching: handles every decoded record of one poll; returns, per record, None when
# handled or the reason it is invalid (it then goes to the DLQ). Exceptions are bugs.
BatchHandler = Callable[[list[Record]], list[str | None]]


@dataclass
class LoopStats:
    handled: int = 0
    dead_lettered: int = 0
    commits: int = 0


@dataclass
class ConsumerLoop:
    """Consumes logical topics with one handler, DLQ routing and safe commits."""

    settings: KafkaSettings
    service: str
    group_id: str
    topics: list[str]
    handler: Handler
    producer: Producer
    consumer_config: dict[str, Any] = field(default_factory=dict)
    commit_interval_s: float = 1.0
    batch_size: int = 500
    lag_interval_s: float = 5.0
    stats: LoopStats = field(default_factory=LoopStats)
    batch_handler: BatchHandler | None = None
    # Earliest deadline first (kit.deadlines): a record's deadline in epoch ms, and optionally
    # its (position, version) so a newer version of a held position replaces the older one.
    deadline_of: Callable[[Record], int] | None = None
    version_of: Callable[[Record], tuple[Hashable, Any] | None] | None = None
    deadline_grace_ms: int = 0  # late only this long after the deadline (kit.deadlines)
    replacement_delay_ms: int = 0  # a new version of a position served before yields this much (kit.deadlines)
    check: Callable[[Record], str | None] | None = None  # with deadline_of: why a record is invalid, or None
    hold: int = 256

    def __post_init__(self) -> None:
        self._serdes = {s.topic: s for s in (TopicSerde.for_topic(t, self.settings) for t in self.topics)}
        self._dlq = {s.topic: self.settings.topic(s.contract.dlq_name) for s in self._serdes.values() if s.contract.dlq}
        self._metrics = {t: (RECORDS_CONSUMED.labels(self.service, t), PROCESSING_SECONDS.labels(self.service, t))
                         for t in self._serdes}
        self._pending: dict[tuple[str, int], int] = {}
        self._failed_before = self.producer.failed
        self._broken = False  # a delivery failed: nothing may be committed any more
        self._stopping = False
        self._assigned: list[TopicPartition] = []
        self._owned: set[tuple[str, int]] = set()  # only these are committed (a poll can return a revoked one's)
        self._queue: DeadlineQueue[tuple[Record, Message]] | None = None
        if self.deadline_of is not None:
            deadline_of, version_of = self.deadline_of, self.version_of
            self._queue = DeadlineQueue(lambda held: deadline_of(held[0]),
                                        None if version_of is None else lambda held: version_of(held[0]),
                                        grace_ms=self.deadline_grace_ms,
                                        replacement_delay_ms=self.replacement_delay_ms)
        self._marked: dict[tuple[str, int], int] = {}  # with a queue: the last committable offset noted
        self._fatal: KafkaError | None = None  # the consumer failed for good: replace it (``_rejoin``)
        self._rejoins: list[float] = []
        self._consumer = self._new_consumer()

    def _new_consumer(self) -> Consumer:
        return Consumer({
            **self.settings.client_config(),
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
            **group_membership(self.service),
            **self.consumer_config,
        })

    # -- lifecycle -----------------------------------------------------------------

    def stop(self, *_: object) -> None:
        """Ask the loop to finish after the current record (safe from a signal handler)."""
        self._stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self, max_records: int | None = None, idle_timeout_s: float | None = None) -> LoopStats:
        """Consume until stopped (or ``max_records`` handled, or idle for ``idle_timeout_s``)."""
        self._subscribe()
        last_commit = last_lag = last_record = time.monotonic()
        try:
            while not self._stopping:
                if self._fatal is not None:
                    self._rejoin()
                if self._queue is not None:
                    batch = self._consumer.consume(max(1, self.hold - len(self._queue)), 0 if self._queue else 0.2)
                    now = time.monotonic()
                    activity = bool(batch) or bool(self._queue)  # held work is activity
                    self._consume_held(batch)
                    if max_records is not None and self.stats.handled >= max_records:
                        self._stopping = True
                    batch = []
                else:
                    batch = self._consumer.consume(self.batch_size, 0.2)
                    now = time.monotonic()
                    activity = bool(batch)
                if self.batch_handler is not None and batch:
                    self._consume_batch(batch)
                    batch = []
                for msg in batch:
                    if self._fatal is not None:
                        break  # the rest goes to whoever owns the partitions next (``_rejoin``)
                    self._consume_one(msg)
                    if self._stopping or (max_records is not None and self.stats.handled >= max_records):
                        self._stopping = True
                        break
                if activity:
                    last_record = now
                elif idle_timeout_s is not None and now - last_record > idle_timeout_s:
                    break
                self.producer.poll(0)
                if now - last_commit >= self.commit_interval_s:
                    self._commit()
                    last_commit = now
                if now - last_lag >= self.lag_interval_s:
                    self._report_lag()
                    last_lag = now
        finally:
            self._commit()
            self._consumer.close()
        return self.stats

    def _subscribe(self) -> None:
        self._consumer.subscribe(list(self._serdes), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_revoke)

    def _rejoin(self) -> None:
        """Replace a consumer librdkafka failed for good (its instance cannot be used again) by a
        new one: what it held or had not committed is consumed again by whoever owns it next."""
        error, self._fatal = self._fatal, None
        now = time.monotonic()
        self._rejoins = [t for t in self._rejoins if now - t < REJOIN_WINDOW_S] + [now]
        if len(self._rejoins) > REJOINS_ALLOWED:
            raise KafkaException(error)  # fenced again and again: a second process with this instance id?
        log.warning("consumer_rejoining", error=str(error), rejoins=len(self._rejoins))
        CONSUMER_REJOINS.labels(self.service).inc()
        self._owned.clear()
        self._pending.clear()
        self._marked.clear()
        self._assigned = []
        if self._queue is not None:
            self._queue.drop(list(self._queue.committable()))  # every partition it took from
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.info("consumer_close_failed", error=str(exc))
        self._consumer = self._new_consumer()
        self._subscribe()

    # -- one record ---------------------------------------------------------------

    def _consume_one(self, msg: Message) -> None:
        if not self._usable(msg):
            return
        topic, partition, offset = source_of(msg)
        record = self._decode(msg)
        if record is not None:
            self._handle(record, msg)
        self._pending[(topic, partition)] = offset + 1

    def _usable(self, msg: Message) -> bool:
        """False for a consumer event that is not a record (partition EOF, a transient error);
        a fatal one (the consumer cannot be used again) is noted for ``_rejoin``."""
        err = msg.error()
        if err is None:
            return True
        if is_fatal(err):
            self._fatal = err
            return False
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer_error", error=str(err))
        return False

    def _decode(self, msg: Message) -> Record | None:
        """The decoded record, or None when it does not decode (then it is dead-lettered, counted)."""
        topic, partition, offset = source_of(msg)
        serde = self._serdes[topic]
        try:
            return Record(topic=topic, partition=partition, offset=offset, timestamp_ms=msg.timestamp()[1],
                          key=serde.decode_key(msg.key()), value=serde.decode_value(msg.value()),
                          headers=tuple(_headers(msg)))
        except DecodeError as exc:
            self._dead_letter(msg, "undecodable", str(exc))
            self._metrics[topic][0].inc()
            return None

    def _handle(self, record: Record, msg: Message) -> None:
        """One record through the handler: InvalidRecord goes to the DLQ; other exceptions propagate."""
        started = time.perf_counter()
        structlog.contextvars.bind_contextvars(topic=record.topic, partition=record.partition, offset=record.offset)
        try:
            self.handler(record)
        except InvalidRecord as exc:
            self._dead_letter(msg, "invalid", exc.reason)
        else:
            self.stats.handled += 1
        finally:
            structlog.contextvars.unbind_contextvars("topic", "partition", "offset")
        consumed, seconds = self._metrics[record.topic]
        consumed.inc()
        seconds.observe(time.perf_counter() - started)

    def _consume_batch(self, batch: list[Message]) -> None:
        records, messages, done = [], [], []  # done: dead-lettered while decoding
        for msg in batch:
            if not self._usable(msg):
                continue
            record = self._decode(msg)
            if record is None:
                done.append(source_of(msg))
            else:
                records.append(record)
                messages.append(msg)
        if self._fatal is not None:
            return  # fenced: nothing of this poll is handled here (``_rejoin``)
        self._handle_batch(records, messages)
        # Only once the whole batch is handled, and never backwards: an exception above (a bug, the
        # registry away) leaves every offset of the batch uncommitted.
        latest: dict[tuple[str, int], int] = {}
        for topic, partition, offset in done + [(r.topic, r.partition, r.offset) for r in records]:
            latest[(topic, partition)] = max(latest.get((topic, partition), -1), offset + 1)
        self._pending.update(latest)

    def _handle_batch(self, records: list[Record], messages: list[Message]) -> None:
        assert self.batch_handler is not None
        started = time.perf_counter()
        reasons = self.batch_handler(records) if records else []
        elapsed = (time.perf_counter() - started) / max(1, len(records))
        for msg, record, reason in zip(messages, records, reasons, strict=True):
            if reason is None:
                self.stats.handled += 1
            else:
                self._dead_letter(msg, "invalid", reason)
            consumed, seconds = self._metrics[record.topic]
            consumed.inc()
            seconds.observe(elapsed)

    def _consume_held(self, batch: list[Message]) -> None:
        """Hold what was consumed, serve the earliest deadlines (a batch, or one record), and note
        what may be committed."""
        queue = self._queue
        assert queue is not None
        for msg in batch:
            if not self._usable(msg):
                continue
            topic, partition, offset = source_of(msg)
            if (topic, partition) not in self._owned:
                continue  # returned by the poll that revoked it: its new owner consumes it
            record = self._decode(msg)
            reason = None if record is None or self.check is None else self.check(record)
            if reason is not None:
                self._dead_letter(msg, "invalid", reason)
                self._metrics[topic][0].inc()
            if record is None or reason is not None:
                queue.taken(topic, partition, offset)
                continue
            superseded = queue.push(topic, partition, offset, (record, msg))
            if superseded is not None:
                self.stats.handled += 1
                RECORDS_SUPERSEDED.labels(self.service, superseded[0].topic).inc()
                self._metrics[superseded[0].topic][0].inc()
        if self._fatal is not None:
            return  # fenced: serve nothing more here (``_rejoin`` drops what is held)
        served = queue.take(self.batch_size if self.batch_handler is not None else 1, int(time.time() * 1000))
        if served:
            if self.batch_handler is not None:
                self._handle_batch([h.item[0] for h in served], [h.item[1] for h in served])
            else:
                for held in served:
                    self._handle(*held.item)
            for held in served:  # only after the handler returned: an exception leaves them uncommitted
                queue.done(held)
        RECORDS_HELD.labels(self.service).set(len(queue))
        for key, offset in queue.committable().items():
            if offset > self._marked.get(key, -1):
                self._pending[key] = self._marked[key] = offset

    def _dead_letter(self, msg: Message, reason_class: str, reason: str) -> None:
        topic, partition, offset = source_of(msg)
        dlq = self._dlq.get(topic)
        if dlq is None:
            raise RuntimeError(f"{topic} has no DLQ but a record could not be handled: {reason}")
        headers = dlq_headers(topic, partition, offset, self.service, reason_class, reason)
        self.producer.produce_raw(dlq, msg.key(), msg.value(), headers=headers + _headers(msg))
        self.stats.dead_lettered += 1
        RECORDS_DEAD_LETTERED.labels(self.service, topic, reason_class).inc()
        log.warning("dead_lettered", reason_class=reason_class, reason=reason)

    # -- commits, rebalances, lag ---------------------------------------------------

    def _commit(self, only: list[TopicPartition] | None = None) -> None:
        if not self._pending or self._broken:
            return
        remaining = self.producer.flush(30.0)
        try:
            if remaining:
                raise DeliveryFailed(f"{remaining} produced records were not acknowledged within 30 s")
            self.producer.raise_if_failed(self._failed_before)
        except DeliveryFailed as exc:
            self._broken = True
            log.error("not_committing", reason=str(exc), pending=len(self._pending))
            raise
        wanted = None if only is None else {(tp.topic, tp.partition) for tp in only}
        for key in [k for k in self._pending if k not in self._owned]:
            del self._pending[key]  # consumed by a poll that revoked it: never committed from here
        keys = [k for k in self._pending if wanted is None or k in wanted]
        if not keys:
            return
        offsets = [TopicPartition(t, p, self._pending.pop((t, p))) for t, p in keys]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
            self.stats.commits += 1
        except KafkaException as exc:
            # A commit can fail after the partitions moved to another member; the records
            # are then consumed again there, which handlers tolerate (idempotent effects).
            # Offsets still ours are tried again at the next commit unless newer ones were noted.
            log.warning("commit_failed", error=str(exc))
            if is_fatal(exc.args[0]):
                self._fatal = exc.args[0]
            for tp in offsets:
                self._pending.setdefault((tp.topic, tp.partition), tp.offset)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = sorted(set(self._assigned) | set(partitions), key=lambda tp: (tp.topic, tp.partition))
        self._owned |= {(tp.topic, tp.partition) for tp in partitions}
        log.info("partitions_assigned", partitions=[f"{tp.topic}[{tp.partition}]" for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._commit(only=partitions)
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self._owned -= revoked
        for key in revoked:
            self._pending.pop(key, None)
            self._marked.pop(key, None)
        if self._queue is not None:  # their held records are consumed again by the new owner
            self._queue.drop(revoked)
        self._assigned = [tp for tp in self._assigned if (tp.topic, tp.partition) not in revoked]
        log.info("partitions_revoked", partitions=[f"{tp.topic}[{tp.partition}]" for tp in partitions])

    def _report_lag(self) -> None:
        if not self._assigned:
            return
        for tp in self._consumer.position(self._assigned):
            try:
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if tp.offset == OFFSET_INVALID or high < 0:
                continue
            CONSUMER_LAG.labels(self.service, tp.topic, str(tp.partition)).set(max(0, high - tp.offset))


def dlq_headers(topic: str, partition: int, offset: int, service: str, reason_class: str,
                reason: str) -> Headers:
    """The headers every DLQ record carries (the contract in schemas/README.md)."""
    return [
        ("dlq.reason", reason.encode()),
        ("dlq.reason_class", reason_class.encode()),
        ("dlq.source.topic", topic.encode()),
        ("dlq.source.partition", str(partition).encode()),
        ("dlq.source.offset", str(offset).encode()),
        ("dlq.service", service.encode()),
        ("dlq.failed_at_ms", str(int(time.time() * 1000)).encode()),
    ]


def source_of(msg: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed record (set on every record a consumer returns)."""
    return cast(str, msg.topic()), cast(int, msg.partition()), cast(int, msg.offset())


def is_fatal(err: KafkaError) -> bool:
    """The client instance failed for good. A consumer's fatal error (a static member fenced)
    arrives as an event whose code is ``_FATAL`` (a failed commit: ``FENCED_INSTANCE_ID``) and
    whose ``fatal()`` flag is not set."""
    return bool(err.fatal()) or err.code() in (KafkaError._FATAL, KafkaError.FENCED_INSTANCE_ID)


def is_partition_eof(msg: Message) -> bool:
    err = msg.error()
    return err is not None and err.code() == KafkaError._PARTITION_EOF


def _headers(msg: Message) -> Headers:
    raw = msg.headers()
    if not raw:
        return []
    return list(raw.items()) if isinstance(raw, dict) else list(raw)
