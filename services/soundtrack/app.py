"""Soundtrack's stream processor (faust-streaming): telemetry -> per-listener state -> requests.

* ``listeners`` is a changelog-backed Faust table keyed by the pseudonymous listener id,
  written to the partition of the event that changed it (co-partitioned with the
  telemetry); it survives restarts and rebalances.
* Telemetry updates the listener's state and emits the requests due now.
* A timer finds local listeners that need a request without new telemetry (missing
  samples: hold, then drift to neutral) and sends a tick to the internal
  ``soundtrack.ticks`` topic on the listener's own partition: Faust tables can only be
  changed from a stream, and the tick keeps the change co-partitioned.
* Faust's exactly-once mode is not used: request ids are deterministic, so a replayed
  event re-emits identical requests and downstream effects are idempotent.
* Bad telemetry (undecodable, or out of ingest's physiological ranges: written to the topic
  directly) goes to listener.telemetry.v1.dlq with the reason.
* An erasure (listener.erasures.v1) deletes the listener's state; Faust writes the tombstone
  to the table's compacted changelog.
* Faust connects with the kit's settings (soundtrack.broker: SASL_SSL with SCRAM, mutual TLS),
  and its changelog and tick topics get the cluster's replication factor and min ISR.
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
from kit.topics import cluster_replication, ensure_topic
from soundtrack.broker import app_settings, topic_config
from soundtrack.schedule import IDLE_MS, ListenerState, due_requests, next_due_ms, observe

log = structlog.get_logger()
SERVICE = "soundtrack"
TELEMETRY, REQUESTS, ERASURES = "listener.telemetry.v1", "soundtrack.requests.v1", "listener.erasures.v1"

REQUESTS_EMITTED = Counter("entrain_soundtrack_requests_total", "Segment requests emitted.", ["reason"])
ERASED = Counter("entrain_soundtrack_erasures_total", "Listener erasure requests applied.")
EVICTED = Counter("entrain_soundtrack_listeners_evicted_total", "Listener states deleted after an hour idle.")
ACTIVE = Gauge("entrain_soundtrack_active_listeners", "Listeners with recent telemetry on this worker.")
REQUEST_DELAY = Histogram("entrain_soundtrack_request_delay_seconds",
                          "From a telemetry record's broker timestamp to the requests its processing emitted "
                          "(the system part of the adaptation delay).",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

kafka = KafkaSettings.from_env()
DATADIR = Path(os.environ.get("ENTRAIN_SOUNDTRACK_DATADIR", STATE_DIR / "soundtrack" / "faust"))
DATADIR.mkdir(parents=True, exist_ok=True)
telemetry_serde = TopicSerde.for_topic(TELEMETRY, kafka)
requests_serde = TopicSerde.for_topic(REQUESTS, kafka)
erasures_serde = TopicSerde.for_topic(ERASURES, kafka)

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
TICKS = f"{kafka.topic_prefix}soundtrack.ticks"
TICKS_RETENTION_S = 3_600
ticks_topic = app.topic(TICKS, key_type=bytes, value_type=bytes,
                        key_serializer="raw", value_serializer="raw", partitions=telemetry_serde.contract.partitions,
                        internal=True, retention=float(TICKS_RETENTION_S), config=FAUST_TOPIC_CONFIG)
listeners = app.Table("listeners", default=None, partitions=telemetry_serde.contract.partitions,
                      schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
                      extra_topic_configs=FAUST_TOPIC_CONFIG)
_dlq_producer: Producer | None = None
EVICT_AFTER_MS = int(float(os.environ.get("ENTRAIN_SOUNDTRACK_EVICT_AFTER_S", "3600")) * 1000)  # then the state goes
_evicting: set[str] = set()


def now_ms() -> int:
    return int(time.time() * 1000)


async def _emit(key: bytes, state: ListenerState, partition: int, requests: list[dict[str, Any]]) -> None:
    listeners[state.listener_id] = {**state.to_dict(), "partition": partition, "due_at": next_due_ms(state)}
    for request in requests:
        await requests_topic.send(key=key, value=requests_serde.encode_value(request))
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
        stored = listeners.get(listener)
        state = ListenerState.from_dict(stored) if stored else ListenerState(listener)
        now = now_ms()
        state, requests = due_requests(observe(state, sample, now), now)
        await _emit(event.key, state, event.message.partition, requests)
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
        held = listeners.pop(listener, None) is not None
        ERASED.inc()
        log.info("listener_erased", listener_id=listener, had_state=held)


@app.agent(ticks_topic)
async def on_tick(stream: Any) -> None:
    async for event in stream.events():
        try:
            listener = telemetry_serde.decode_key(event.key)["listener_id"]
        except DecodeError:
            continue  # only this service writes ticks; nothing else should be there
        stored = listeners.get(listener)
        if not stored:
            continue
        if now_ms() - stored["last_seen_ms"] > EVICT_AFTER_MS:  # gone: the state goes too (changelog tombstone)
            listeners.pop(listener, None)
            EVICTED.inc()
            continue
        state, requests = due_requests(ListenerState.from_dict(stored), now_ms())
        if requests:
            await _emit(event.key, state, event.message.partition, requests)


@app.timer(interval=0.1)  # a due request waits at most this long for its tick
async def schedule() -> None:
    """Tick every local listener that needs a request before its next telemetry arrives."""
    now, active = now_ms(), 0
    for key, stored in list(listeners.items()):
        if not stored:
            continue
        idle_ms = now - stored["last_seen_ms"]
        live = idle_ms <= IDLE_MS
        active += live
        evict = idle_ms > EVICT_AFTER_MS and key not in _evicting
        if evict:
            _evicting.add(key)  # one tick is enough; the agent deletes the state
        elif idle_ms <= EVICT_AFTER_MS:
            _evicting.discard(key)  # back (or never gone): a later idle spell must evict again
        if evict or (live and stored.get("due_at", 0) <= now):  # cheap: no decoding for listeners not due
            await ticks_topic.send(key=telemetry_serde.encode_key({"listener_id": key}), value=b"",
                                   partition=stored["partition"])
    ACTIVE.set(active)
    if len(_evicting) > 10_000:  # keys whose state is gone already
        _evicting.intersection_update(k for k, v in listeners.items() if v)


def declare_ticks() -> None:
    """Create the tick topic before the worker starts. Left to Faust, it is created while the
    consumer subscribes: on a busy machine the subscription can miss it ("not found in cluster
    metadata") and the agent then reads no ticks until the next metadata refresh (minutes), so
    no scheduled request is made (seen in the worker test)."""
    ensure_topic(kafka, TICKS, telemetry_serde.contract.partitions,
                 {**FAUST_TOPIC_CONFIG, "retention.ms": str(TICKS_RETENTION_S * 1000)})


_health: HealthServer | None = None


@app.task
async def start_health() -> None:
    global _health
    _health = HealthServer.for_service(ServiceSettings.from_env("soundtrack", 9102)).start()
    _health.add_ready_check("faust", lambda: app.rebalancing is False)
