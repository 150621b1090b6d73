"""Soundtrack's stream processor (faust-streaming): telemetry -> per-listener state -> requests.

* ``listeners`` is a changelog-backed Faust table keyed by the pseudonymous listener id,
  written to the partition of the telemetry that changed it (co-partitioned); it survives
  restarts and rebalances. The worker holds the states in memory (``soundtrack.held``) and
  writes each changed one to the changelog once per commit interval, just before the
  consumer commits (a Faust sensor): the changelog gets the changes of every committed offset
  (as far as Faust's producer flush before a commit goes, as for any Faust table). Only
  listeners on partitions this worker owns are loaded, woken or written (the table's store
  also holds standby copies).
* Telemetry updates the listener's state and emits the requests due now.
* A timer emits the requests due for listeners whose telemetry paused (hold, then drift to
  neutral), from a due-time heap (only the listeners due are looked at), and evicts states
  idle for an hour (a changelog tombstone).
* Faust's exactly-once mode is not used: request ids are deterministic, so a replayed
  event re-emits requests with the same ids, and inference's write-once generation log
  answers a repeated id with the segment it made first. A crash loses the state changes
  since the last commit (at most ``broker_commit_interval``, 1 s): their telemetry is
  consumed again, and requests the timer made since then are made again with the same ids.
* Bad telemetry (undecodable, or out of ingest's physiological ranges: written to the topic
  directly) goes to listener.telemetry.v1.dlq with the reason.
* An erasure (listener.erasures.v1) deletes the listener's state with a tombstone on the
  table's compacted changelog.
* Faust connects with the kit's settings (soundtrack.broker: SASL_SSL with SCRAM, mutual TLS),
  and its changelog topic gets the cluster's replication factor and min ISR.
* A new session starts playing after a delay measured from recent sessions' first segments
  (``soundtrack.startup``; ``on_segment`` reads soundtrack.segments.v1 for it).
* With ENTRAIN_INSTANCE_ID set the worker is a static group member: restarted, it takes its
  partitions back without waiting for its old session to expire.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import faust
import structlog
from prometheus_client import Counter, Gauge, Histogram

from kit.consumer import dlq_headers
from kit.observability import RECORDS_CONSUMED, RECORDS_DEAD_LETTERED, HealthServer
from kit.physiology import CADENCE_SPM, HEART_RATE_BPM
from kit.producer import DeliveryFailed, Producer
from kit.serde import DecodeError, RegistryUnavailable, TopicSerde
from kit.settings import SESSION_TIMEOUT_MS, STATE_DIR, KafkaSettings, ServiceSettings, group_membership
from kit.topics import cluster_replication
from soundtrack.broker import app_settings, topic_config
from soundtrack.held import Listeners
from soundtrack.schedule import ListenerState, due_requests, observe
from soundtrack.startup import StartupDelay

log = structlog.get_logger()
SERVICE = "soundtrack"
TELEMETRY, REQUESTS, ERASURES = "listener.telemetry.v1", "soundtrack.requests.v1", "listener.erasures.v1"
SEGMENTS = "soundtrack.segments.v1"

REQUESTS_EMITTED = Counter("entrain_soundtrack_requests_total", "Segment requests emitted.", ["reason"])
ERASED = Counter("entrain_soundtrack_erasures_total", "Listener erasure requests applied.")
EVICTED = Counter("entrain_soundtrack_listeners_evicted_total", "Listener states deleted after an hour idle.")
ACTIVE = Gauge("entrain_soundtrack_active_listeners", "Listeners with recent telemetry on this worker.")
STATE_WRITES = Counter("entrain_soundtrack_state_writes_total",
                       "Listener states written to the table's changelog (at most one per listener per commit).")
REQUEST_DELAY = Histogram("entrain_soundtrack_request_delay_seconds",
                          "From a telemetry record's broker timestamp to the requests its processing emitted "
                          "(the system part of the adaptation delay).",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
STARTUP_DELAY = Gauge("entrain_soundtrack_startup_delay_seconds",
                      "How long a new session waits for its first sound (from measured first segments).")
FIRST_SEGMENT = Histogram("entrain_soundtrack_first_segment_seconds",
                          "From a session's first request to its verified segment on soundtrack.segments.v1.",
                          buckets=(0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 20))

kafka = KafkaSettings.from_env()
DATADIR = Path(os.environ.get("ENTRAIN_SOUNDTRACK_DATADIR", STATE_DIR / "soundtrack" / "faust"))
DATADIR.mkdir(parents=True, exist_ok=True)
telemetry_serde = TopicSerde.for_topic(TELEMETRY, kafka)
requests_serde = TopicSerde.for_topic(REQUESTS, kafka)
erasures_serde = TopicSerde.for_topic(ERASURES, kafka)
segments_serde = TopicSerde.for_topic(SEGMENTS, kafka)

# The cluster's defaults for new topics, unless the settings pin both.
CLUSTER = (0, 0) if kafka.replication_factor and kafka.min_insync_replicas else cluster_replication(kafka)
FAUST_TOPIC_CONFIG = topic_config(kafka, CLUSTER)  # min.insync.replicas of the topics Faust creates
app = faust.App(
    os.environ.get("ENTRAIN_SOUNDTRACK_APP_ID", f"{kafka.topic_prefix}soundtrack"),
    **app_settings(kafka, CLUSTER),  # brokers, SASL/TLS credentials, replication factor
    store="memory://",  # rebuilt from the changelog topic on start
    topic_partitions=telemetry_serde.contract.partitions,
    web_enabled=False,
    datadir=str(DATADIR),
    broker_commit_interval=1.0,
    broker_session_timeout=SESSION_TIMEOUT_MS / 1000,
    consumer_group_instance_id=group_membership(SERVICE).get("group.instance.id"),
)
telemetry_topic = app.topic(telemetry_serde.topic, key_type=bytes, value_type=bytes,
                            key_serializer="raw", value_serializer="raw")
requests_topic = app.topic(requests_serde.topic, key_type=bytes, value_type=bytes,
                           key_serializer="raw", value_serializer="raw")
erasures_topic = app.topic(erasures_serde.topic, key_type=bytes, value_type=bytes,
                           key_serializer="raw", value_serializer="raw")
segments_topic = app.topic(segments_serde.topic, key_type=bytes, value_type=bytes,
                           key_serializer="raw", value_serializer="raw")
listeners = app.Table("listeners", default=None, partitions=telemetry_serde.contract.partitions,
                      schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
                      extra_topic_configs=FAUST_TOPIC_CONFIG)
_dlq_producer: Producer | None = None
EVICT_AFTER_MS = int(float(os.environ.get("ENTRAIN_SOUNDTRACK_EVICT_AFTER_S", "3600")) * 1000)  # then the state goes
held = Listeners(listeners, EVICT_AFTER_MS)
startup = StartupDelay()
STARTUP_SAMPLE_MAX_AGE_MS = 300_000
STARTUP_DELAY.set(startup.delay_ms() / 1000)


class _WriteStatesBeforeCommit(faust.Sensor):
    """Faust calls this as the consumer starts a commit, before it takes the acked offsets and
    flushes its producer: the states those offsets changed reach the changelog first."""

    def on_commit_initiated(self, consumer: Any) -> None:
        STATE_WRITES.inc(held.flush())


app.sensors.add(_WriteStatesBeforeCommit())


@app.on_partitions_revoked.connect
async def _forget_on_revoke(sender: Any, /, *_: Any, signal: Any, **__: Any) -> None:
    held.forget_local()


@app.on_partitions_assigned.connect
async def _own_on_assign(sender: Any, /, *args: Any, signal: Any, **__: Any) -> None:
    """The whole new assignment (eager rebalancing): the telemetry partitions, not standby copies."""
    held.assign({tp.partition for tp in args[0] if tp.topic == telemetry_serde.topic})


def now_ms() -> int:
    return int(time.time() * 1000)


async def _send(requests: list[dict[str, Any]]) -> None:
    for request in requests:
        await requests_topic.send(key=requests_serde.encode_key({"listener_id": request["listener_id"]}),
                                  value=requests_serde.encode_value(request))
        REQUESTS_EMITTED.labels(request["policy_reason"]).inc()


def out_of_range(sample: dict[str, Any]) -> str | None:
    """Why a decoded sample is physiologically impossible (ingest's ranges), or None."""
    for name, (low, high) in (("heart_rate_bpm", HEART_RATE_BPM), ("cadence_spm", CADENCE_SPM)):
        value = sample[name]
        if value is not None and not low <= value <= high:
            return f"{name}: {value} is outside {low}-{high}"
    return None


def _dead_letter(event: Any, reason_class: str, reason: str) -> None:
    global _dlq_producer
    if _dlq_producer is None:
        _dlq_producer = Producer(kafka, SERVICE)
    message = event.message
    headers = dlq_headers(message.topic, message.partition, message.offset, SERVICE, reason_class, reason)
    failed_before = _dlq_producer.failed
    _dlq_producer.produce_raw(message.topic + ".dlq", message.key, message.value, headers=headers)
    try:  # before the offset moves on: a lost dead letter must not be acknowledged as handled
        if _dlq_producer.flush(10):
            raise DeliveryFailed(f"dead letter to {message.topic}.dlq not acknowledged within 10 s")
        _dlq_producer.raise_if_failed(failed_before)
    except DeliveryFailed as exc:
        log.critical("dead_letter_lost_exiting", reason=str(exc), partition=message.partition, offset=message.offset)
        os._exit(70)  # without acking this event: it is consumed again after the restart
    RECORDS_DEAD_LETTERED.labels(SERVICE, message.topic, reason_class).inc()
    log.warning("dead_lettered", partition=message.partition, offset=message.offset, reason=reason)


def _decode_or_dead_letter(event: Any, serde: TopicSerde) -> tuple[str, dict[str, Any]] | None:
    """(listener id, value) of a consumed record; None when it went to its topic's DLQ instead."""
    RECORDS_CONSUMED.labels(SERVICE, event.message.topic).inc()
    try:
        listener = serde.decode_key(event.key)["listener_id"]
        value = serde.decode_value(event.value)
        if value is None:
            raise DecodeError(f"{serde.contract.name} record is a tombstone")
    except DecodeError as exc:
        _dead_letter(event, "undecodable", str(exc))
        return None
    except RegistryUnavailable as exc:  # an outage, not bad data: do not ack; the restart reads it again
        log.critical("schema_registry_unavailable_exiting", reason=str(exc), partition=event.message.partition,
                     offset=event.message.offset)
        os._exit(70)
    return listener, value


@app.agent(telemetry_topic)
async def on_telemetry(stream: Any) -> None:
    async for event in stream.events():
        decoded = _decode_or_dead_letter(event, telemetry_serde)
        if decoded is None:
            continue
        listener, sample = decoded
        problem = out_of_range(sample)
        if problem:  # ingest never lets these through; someone wrote to the topic directly
            _dead_letter(event, "invalid", problem)
            continue
        known = held.get(listener)
        now = now_ms()
        state, requests = due_requests(observe(known.state if known else ListenerState(listener), sample, now), now,
                                       startup.delay_ms())
        held.put(listener, state, event.message.partition)
        await _send(requests)
        if requests and event.message.timestamp:
            REQUEST_DELAY.observe(max(0.0, time.time() - event.message.timestamp))


@app.agent(erasures_topic)
async def on_erasure(stream: Any) -> None:
    """A listener asked to be forgotten: delete their state (Faust writes the changelog tombstone)."""
    async for event in stream.events():
        decoded = _decode_or_dead_letter(event, erasures_serde)
        if decoded is None:
            continue
        listener = decoded[0]
        had_state = held.drop(listener)
        ERASED.inc()
        log.info("listener_erased", listener_id=listener, had_state=had_state)


@app.agent(segments_topic)
async def on_segment(stream: Any) -> None:
    """Times every session's first segment (request to verified record) for ``startup``; records
    older than STARTUP_SAMPLE_MAX_AGE_MS (a new group reading history) are not today's pipeline.
    Delivery is the consumer that answers for a bad record (it logs and skips it); here a record
    that cannot be read is one measurement fewer."""
    async for event in stream.events():
        RECORDS_CONSUMED.labels(SERVICE, SEGMENTS).inc()
        if not event.message.timestamp or now_ms() - event.message.timestamp * 1000 > STARTUP_SAMPLE_MAX_AGE_MS:
            continue
        try:
            segment = segments_serde.decode_value(event.value)
        except (DecodeError, RegistryUnavailable):
            continue
        if segment is None or segment["sequence"] != 0 or not segment.get("requested_at"):
            continue
        requested_ms, ready_ms = int(segment["requested_at"]), int(event.message.timestamp * 1000)
        startup.observe(requested_ms, ready_ms)
        FIRST_SEGMENT.observe(max(0, ready_ms - requested_ms) / 1000)
        STARTUP_DELAY.set(startup.delay_ms() / 1000)


_active_counted_at = 0


@app.timer(interval=0.1)  # a due request waits at most this long
async def schedule() -> None:
    """Requests for listeners due before their next telemetry; evictions of idle states."""
    global _active_counted_at
    if app.rebalancing:  # the table is being recovered
        return
    now, generation = now_ms(), held.generation
    while (due := held.next_due(now)) is not None:
        listener, known = due
        if now - known.state.last_seen_ms > EVICT_AFTER_MS:  # gone: the state goes too (changelog tombstone)
            held.drop(listener)
            EVICTED.inc()
            continue
        state, requests = due_requests(known.state, now, startup.delay_ms())
        if not requests:
            held.rewake(listener, now + 100)
            continue
        held.put(listener, state, known.partition, not_before_ms=now + 1)
        await _send(requests)
        if held.generation != generation:  # a rebalance began while the requests were sent
            break
    if now - _active_counted_at >= 1000:
        ACTIVE.set(held.active(now))
        _active_counted_at = now


_health: HealthServer | None = None


@app.task
async def start_health() -> None:
    global _health
    _health = HealthServer.for_service(ServiceSettings.from_env("soundtrack", 9102)).start()
    _health.add_ready_check("faust", lambda: app.rebalancing is False)
