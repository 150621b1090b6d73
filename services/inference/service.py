"""Inference: soundtrack.requests.v1 -> soundtrack.segments.generated.v1.

Requests are held across polls and served earliest deadline first, a micro-batch at a time
(one batched model step per token; ``kit.deadlines``): a new session's first segment, due
soonest, goes before everyone's look-ahead, and a request the scheduler has replaced (a newer
version of the same position is held) is skipped. A request already past its deadline is
dropped (metric, log), never generated late. Beyond capacity, a session that is not being
served is refused (``inference.admission``: its requests are not generated, and the decision
goes to soundtrack.admissions.v1 for the listener's playlist) instead of everyone running late.

One segment id names one audio: every generated segment is logged, write-once, in the segment
store with the context its successor continues from (``GenerationLog``), so a replayed request
gets the logged record instead of a new rendering, and a session continues identically after a
crash. Audio goes to the segment store; the record carries its URI, SHA-256, duration
and provenance. At start-up the demo catalog is published to catalog.works.v1.

Generation consent: the live records on catalog.consent.v1 under the shared rule
(``kit.consent``: opt-in, a per-work record over a catalog-wide one, no record = no
consent). Only works the model was trained on whose every rights holder grants
``ai_generation`` at generation time may receive influence weight.

Training consent: the model generates only while no holder of a work it was trained on has
a record in effect refusing ``ai_training``, and only if the model registry
(inference.models.v1, ``inference.registry``) has not retired its version; otherwise new
requests are refused (counted, logged) until the retrainer publishes a replacement, which is
loaded from the segment store at the next batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import structlog
import torch
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from inference.admission import DELIVERED_SLACK_MIN_MS, RETRY_MS, Admission
from inference.catalog import load_catalog, training_withdrawals
from inference.engine import Context, Engine, Job, Params
from inference.registry import ModelRegistry, unpack
from inference.render import soundfont_path
from inference.train import MODEL_DIR
from inference.wav import wav_bytes
from kit.consent import ConsentHistory
from kit.consumer import ConsumerLoop, Record
from kit.deadlines import REPLACEMENT_DELAY_MS, soundtrack_deadline, soundtrack_position
from kit.producer import Producer
from kit.serde import DecodeError, TopicSerde
from kit.settings import KafkaSettings, ServiceSettings
from kit.store import SegmentStore, store_from_env

log = structlog.get_logger()
SERVICE = "inference"

GENERATION_SECONDS = Histogram("entrain_inference_generation_seconds", "Time to generate and render one batch.",
                               buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
REAL_TIME_FACTOR = Gauge("entrain_inference_real_time_factor", "Seconds of audio per second of compute, last batch.")
DEADLINE_MISSES = Counter("entrain_inference_deadline_misses_total", "Requests dropped because their deadline passed.")
SEGMENTS = Counter("entrain_inference_segments_total", "Segments generated.")
COPY_RESAMPLES = Counter("entrain_inference_copy_resamples_total",
                         "Melodies sampled again because they copied more than two bars of a training work.")
REPLAYED = Counter("entrain_inference_segments_replayed_total",
                   "Requests answered from the generation log (the segment existed: not generated again).")
QUEUE_DEPTH = Gauge("entrain_inference_batch_size", "Requests in the last micro-batch.")
REFUSED = Counter("entrain_inference_requests_refused_total",
                  "Requests not generated because the model's training consent ended (until a new version).")
MODEL = Gauge("entrain_inference_model_info", "The model version generating (1).", ["model_version"])
NOT_ADMITTED = Counter("entrain_inference_requests_not_admitted_total",
                       "Requests not generated because their session was refused at capacity (inference.admission).")
ADMISSIONS = Counter("entrain_inference_admission_decisions_total",
                     "Admission decisions announced on soundtrack.admissions.v1.", ["decision"])
ACTIVE_SESSIONS = Gauge("entrain_inference_active_sessions",
                        "Listeners this instance is serving (inference.admission).")
CAPACITY_SESSIONS = Gauge("entrain_inference_capacity_sessions",
                          "Sessions this instance can serve on time, from its measured generation cost "
                          "(-1: not measured yet).")


class GenerationConsent:
    """Live consent records from catalog.consent.v1, folded into the shared rule."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.history = ConsentHistory()
        self.serde = TopicSerde.for_topic("catalog.consent.v1", kafka)
        self.consumer = Consumer({**kafka.client_config(), "group.id": "inference-consent-reader",
                                  "enable.auto.commit": False, "isolation.level": "read_committed"})
        parts = self.consumer.list_topics(self.serde.topic, timeout=30).topics[self.serde.topic].partitions
        self.partitions = [TopicPartition(self.serde.topic, p) for p in parts]
        self.consumer.assign([TopicPartition(self.serde.topic, p, OFFSET_BEGINNING) for p in parts])

    def catch_up(self, timeout_s: float = 30.0) -> None:
        """Read every record that is on the topic now (to each partition's high watermark): a
        decision that must see every withdrawal (start-up, a training snapshot) waits for this."""
        ends = {tp.partition: self.consumer.get_watermark_offsets(tp, timeout=10) for tp in self.partitions}
        deadline = time.monotonic() + timeout_s
        while True:
            self.refresh()
            positions = {tp.partition: tp.offset for tp in self.consumer.position(self.partitions)}
            if all(low == high or positions[p] >= high for p, (low, high) in ends.items()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.serde.topic} not read to its end within {timeout_s:.0f}s")
            time.sleep(0.05)

    def refresh(self) -> None:
        for msg in self.consumer.consume(1000, 0):
            if msg.error() is not None:
                continue
            try:
                key = self.serde.decode_key(msg.key())
                value = self.serde.decode_value(msg.value())
            except DecodeError:
                continue  # ingest's DLQ is where bad consent records are handled
            if value is None:
                self.history.withdraw(key["rights_holder_id"], key["work_id"], msg.timestamp()[1], msg.offset())
            else:
                self.history.add_record(value, msg.offset())

    def allowed_works(self, now_ms: int) -> set[str]:
        return {w.work_id for w in load_catalog()
                if self.history.work_allowed("ai_generation", w.rights_holders, w.work_id, now_ms)}


class DeliveredSlack:
    """How early watermarked segments reach soundtrack.segments.v1 (the playlist's source) against
    their deadlines: the end of the music path, which inference's own slack does not see (on a
    shared machine watermarking can be what runs late). Every partition, from the end; read
    between batches without waiting. Admission counts a segment delivered with less than
    ``DELIVERED_SLACK_MIN_MS`` to spare as being behind."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.serde = TopicSerde.for_topic("soundtrack.segments.v1", kafka)
        self.consumer = Consumer({**kafka.client_config(), "group.id": "inference-delivery-reader",
                                  "enable.auto.commit": False, "isolation.level": "read_committed"})
        parts = self.consumer.list_topics(self.serde.topic, timeout=30).topics[self.serde.topic].partitions
        self.consumer.assign([TopicPartition(self.serde.topic, p, OFFSET_END) for p in parts])

    def slacks(self) -> list[tuple[int, int]]:
        """(deadline - delivered ms, delivered ms) of the segments delivered since the last call."""
        out = []
        for msg in self.consumer.consume(1000, 0):
            if msg.error() is not None:
                continue
            try:
                value = self.serde.decode_value(msg.value())
            except DecodeError:
                continue  # not ours to judge: delivery and royalty read it too
            if value is not None:
                out.append((int(value["deadline"]) - msg.timestamp()[1], msg.timestamp()[1]))
        return out


def request_params(request: dict[str, Any]) -> Params:
    """A request's generation parameters (ValueError: outside what the engine accepts)."""
    p = request["params"]
    glide = p.get("tempo_from_bpm")
    return Params(float(p["tempo_bpm"]), float(p["energy"]), p["mode"], int(p["key_tonic"]), int(p["bars"]),
                  None if glide is None else float(glide))


def invalid_request(record: Record) -> str | None:
    """Why a request cannot be generated (the consumer loop checks it before holding it), or None."""
    if record.value is None:
        return "request is a tombstone"
    try:
        request_params(record.value)
    except ValueError as exc:
        return f"invalid params: {exc}"
    return None


def segment_id_for(request_id: str) -> str:
    return "seg-" + hashlib.sha256(request_id.encode()).hexdigest()[:24]


class InferenceService:
    def __init__(self, kafka: KafkaSettings, engine: Engine, store: SegmentStore, producer: Producer,
                 registry: ModelRegistry | None = None, models_dir: Path | None = None,
                 admission: Admission | None = None, delivered: DeliveredSlack | None = None) -> None:
        self.kafka, self.engine, self.store, self.producer = kafka, engine, store, producer
        self.out = TopicSerde.for_topic("soundtrack.segments.generated.v1", kafka)
        self.admissions = TopicSerde.for_topic("soundtrack.admissions.v1", kafka)
        self.admission = admission or Admission()
        self.delivered = delivered
        self._marked: dict[str, str] = {}  # listener -> the session mark written last (one write per session)
        self._sessions: OrderedDict[str, str] = OrderedDict()  # listener -> the session admitted last
        self.consent = GenerationConsent(kafka)
        self.log = GenerationLog(store)
        self.registry = registry
        self.models_dir = models_dir or Path(tempfile.mkdtemp(prefix="entrain-models-"))
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._unloadable: set[str] = set()
        MODEL.labels(engine.model_version).set(1)

    def refusal(self, now_ms: int) -> str | None:
        """Why the model must not generate now (its training consent ended), or None. Switches to
        the registry's newest CURRENT version first."""
        if self.registry is not None:
            self.registry.refresh()
            current = self.registry.current()
            if current is not None and current["model_version"] != self.engine.model_version:
                self._switch(current)
            retired = self.registry.retired(self.engine.model_version)
            if retired is not None:
                return f"model {self.engine.model_version} retired: {retired}"
        withdrawn = training_withdrawals(self.consent.history, self.engine.trained_works, now_ms)
        if withdrawn:
            holders = sorted({h for h, _ in withdrawn})
            return f"model {self.engine.model_version}: ai_training withdrawn by {', '.join(holders)}"
        return None

    def _switch(self, record: dict[str, Any]) -> None:
        version = record["model_version"]
        if version in self._unloadable:
            return
        try:
            if record["artifact_uri"] is None:
                folder = MODEL_DIR  # the version built into the image
            else:
                folder = unpack(self.store.get(record["artifact_uri"]), record["artifact_sha256"],
                                Path(tempfile.mkdtemp(dir=self.models_dir)) / "model")
            engine = Engine(folder)
            if engine.model_version != version:
                raise ValueError(f"artifact holds {engine.model_version}, not {version}")
        except Exception as exc:  # a bad artifact must not stop the service: logged, the old model stays
            log.error("model_switch_failed", model_version=version, error=str(exc))
            self._unloadable.add(version)  # not retried every batch; a new version replaces it
            return
        MODEL.labels(self.engine.model_version).set(0)
        log.info("model_switched", previous=self.engine.model_version, model_version=version)
        self.engine = engine
        MODEL.labels(version).set(1)

    def publish_catalog(self) -> int:
        serde, now = TopicSerde.for_topic("catalog.works.v1", self.kafka), int(time.time() * 1000)
        for work in load_catalog():
            self.producer.produce(serde, {"work_id": work.work_id}, work.record(now))
        self.producer.flush(30)
        return len(load_catalog())

    def handle(self, records: list[Record]) -> list[str | None]:
        """Generate every live request of a poll; per record None or the reason it is invalid.

        One segment id names one audio: a request whose segment is in the generation log is
        answered with the logged record (never generated twice, also after a crash or by
        another instance); a new one continues from its previous segment's logged context, and
        is logged before it is produced (the first write wins)."""
        now = int(time.time() * 1000)
        self.consent.refresh()
        if self.delivered is not None:
            for slack, at in self.delivered.slacks():
                self.admission.finished(slack, at, floor_ms=DELIVERED_SLACK_MIN_MS)
        reasons: list[str | None] = [None] * len(records)
        pending: list[tuple[int, dict[str, Any], Params]] = []
        for i, record in enumerate(records):
            reasons[i] = invalid_request(record)
            if reasons[i] is not None:
                continue
            request = record.value
            params = request_params(request)
            logged = self.log.record(segment_id_for(request["request_id"]))
            if logged is not None:
                REPLAYED.inc()
                self.producer.produce(self.out, {"listener_id": request["listener_id"]}, logged)
                continue
            if request["deadline"] <= now:
                DEADLINE_MISSES.inc()
                log.warning("deadline_missed", request_id=request["request_id"], late_ms=now - request["deadline"])
                continue
            if not self._admit(request, now):
                continue
            pending.append((i, request, params))
        if not pending:
            return reasons
        refusal = self.refusal(now)
        if refusal is not None:  # not the requests' fault: dropped like a missed deadline, counted
            REFUSED.inc(len(pending))
            log.warning("generation_refused", reason=refusal, requests=len(pending))
            return reasons
        allowed = self.consent.allowed_works(now) & set(self.engine.profiles)
        if not allowed:
            for i, _, _ in pending:
                reasons[i] = "no trained work has AI-generation consent: cannot attribute a segment"
            return reasons
        QUEUE_DEPTH.set(len(pending))
        # A request continuing a segment of this same poll waits for it: waves, each generated together.
        while pending:
            in_poll = {segment_id_for(r["request_id"]) for _, r, _ in pending}
            wave = [item for item in pending if item[1]["previous_segment_id"] not in in_poll]
            pending = [item for item in pending if item not in wave]
            self._generate(wave, allowed)
        return reasons

    def _admit(self, request: dict[str, Any], now: int) -> bool:
        """Admission control (``inference.admission``); announces a decision that changed."""
        listener, session = request["listener_id"], request["session_id"]
        mark = "admitted-" + hashlib.sha256(f"{listener}/{session}".encode()).hexdigest()[:40]
        continuing = listener not in self.admission.active and self.store.get_named(mark) is not None
        admitted, announce = self.admission.admit(listener, now, continuing)
        if admitted and not continuing and self._marked.get(listener) != mark:
            self.store.put_once(mark, str(now).encode())  # served after a restart or a rebalance too
            self._marked[listener] = mark
            if len(self._marked) > 100_000:
                self._marked.pop(next(iter(self._marked)))
        if admitted:
            self._sessions[listener] = session
            self._sessions.move_to_end(listener)
            if len(self._sessions) > 100_000:
                self._sessions.popitem(last=False)
        else:
            NOT_ADMITTED.inc()
        if announce is not None:
            self._announce(listener, session, announce, now)
        shed = self.admission.shed(now)
        if shed is not None and shed in self._sessions:
            self._announce(str(shed), self._sessions[str(shed)], "AT_CAPACITY", now)
        return admitted

    def _announce(self, listener: str, session: str, decision: str, now: int) -> None:
        ADMISSIONS.labels(decision).inc()
        log.info("admission", decision=decision, active=len(self.admission.active),
                 capacity=self.admission.capacity, session_id=session)
        self.producer.produce(self.admissions, {"listener_id": listener}, {
            "listener_id": listener, "session_id": session, "decision": decision,
            "retry_after_ms": RETRY_MS if decision == "AT_CAPACITY" else 0,
            "active_sessions": len(self.admission.active),
            "capacity_sessions": -1 if self.admission.capacity is None else self.admission.capacity,
            "decided_at": now})

    def warm_up(self) -> None:
        """Generate what a sprint asks for (2 bars at 170 BPM, full energy: the densest music) to
        price admission's capacity; the first run, which pays the model's first steps, is not counted."""
        for counted in (False, True):
            started = time.perf_counter()
            segment = self.engine.generate(Params(170.0, 1.0, "MAJOR", 0, 2), seed=0)
            if counted:
                self.admission.measured(time.perf_counter() - started, segment.duration_ms / 1000)
                self.admission.floor_cost = self.admission.cost or 0.0
        CAPACITY_SESSIONS.set(self.admission.capacity if self.admission.capacity is not None else -1)
        log.info("warmed_up", cost_per_audio_s=round(self.admission.cost or 0, 4), capacity=self.admission.capacity)

    def _generate(self, wave: list[tuple[int, dict[str, Any], Params]], allowed: set[str]) -> None:
        jobs = [Job(params, request["seed"], self.log.context(request["previous_segment_id"]))
                for _, request, params in wave]
        started = time.perf_counter()
        segments = self.engine.generate_batch(jobs, allowed)
        elapsed = time.perf_counter() - started
        GENERATION_SECONDS.observe(elapsed)
        audio_s = sum(s.duration_ms for s in segments) / 1000
        REAL_TIME_FACTOR.set(audio_s / max(elapsed, 1e-9))
        self.admission.measured(elapsed, audio_s)
        CAPACITY_SESSIONS.set(self.admission.capacity if self.admission.capacity is not None else -1)
        ACTIVE_SESSIONS.set(len(self.admission.active))
        COPY_RESAMPLES.inc(sum(s.copy_resamples for s in segments))
        for (_, request, _), segment in zip(wave, segments, strict=True):
            uri, digest = self.store.put(wav_bytes(segment.rendered.audio), "wav")
            record = self.log.write(self._record(request, segment, uri, digest), segment.context)
            self.producer.produce(self.out, {"listener_id": request["listener_id"]}, record)
            SEGMENTS.inc()
            now = int(time.time() * 1000)
            self.admission.finished(request["deadline"] - now, now)

    def _record(self, request: dict[str, Any], segment: Any, uri: str, digest: str) -> dict[str, Any]:
        return {
            "segment_id": segment_id_for(request["request_id"]), "request_id": request["request_id"],
            "listener_id": request["listener_id"], "session_id": request["session_id"],
            "sequence": request["sequence"], "params": request["params"],
            "audio": {"uri": uri, "sha256": digest, "format": "WAV", "sample_rate_hz": 44100, "channels": 2,
                      "duration_ms": segment.duration_ms},
            "provenance": {"model_id": self.engine.model_id, "model_version": self.engine.model_version,
                           "training_manifest_sha256": self.engine.manifest_sha256, "seed": request["seed"],
                           "influences": [{"work_id": w, "weight_ppm": p} for w, p in segment.influences]},
            "generated_at": int(time.time() * 1000), "deadline": request["deadline"],
            "requested_at": request["requested_at"], "previous_segment_id": request["previous_segment_id"],
        }


class GenerationLog:
    """Durable, write-once records of generated segments, in the segment store by segment id:
    the produced record and the context the session's next segment continues from.

    Contexts of recent segments are also kept in memory (bounded); the store is the truth."""

    def __init__(self, store: SegmentStore, cache_size: int = 4096) -> None:
        self.store, self.cache_size = store, cache_size
        self._contexts: OrderedDict[str, Context] = OrderedDict()

    def _entry(self, segment_id: str) -> dict[str, Any] | None:
        raw = self.store.get_named(f"{segment_id}.json")
        return None if raw is None else dict(json.loads(raw))

    def record(self, segment_id: str) -> dict[str, Any] | None:
        entry = self._entry(segment_id)
        return None if entry is None else dict(entry["record"])

    def context(self, segment_id: str | None) -> Context | None:
        """The context a segment left, or None (no previous segment, or it was never generated:
        dropped past its deadline, which stays true on every replay)."""
        if segment_id is None:
            return None
        context = self._contexts.get(segment_id)
        if context is None:
            entry = self._entry(segment_id)
            if entry is None:
                return None
            data = self.store.get(entry["context_uri"])
            if hashlib.sha256(data).hexdigest() != entry["context_sha256"]:
                raise RuntimeError(f"context of {segment_id} does not match its SHA-256: the store is corrupt")
            context = self._remember(segment_id, Context.from_bytes(data))
        return context

    def write(self, record: dict[str, Any], context: Context) -> dict[str, Any]:
        """Log a generated segment; returns the logged record (another writer's, if it was first)."""
        uri, digest = self.store.put(context.to_bytes(), "ctx")
        entry = {"record": record, "context_uri": uri, "context_sha256": digest}
        stored = json.loads(self.store.put_once(f"{record['segment_id']}.json", json.dumps(entry).encode()))
        if stored["context_sha256"] == digest:
            self._remember(record["segment_id"], context)
        return dict(stored["record"])

    def _remember(self, segment_id: str, context: Context) -> Context:
        self._contexts[segment_id] = context
        self._contexts.move_to_end(segment_id)
        while len(self._contexts) > self.cache_size:
            self._contexts.popitem(last=False)
        return context


def main() -> None:
    from kit.logs import configure_logging
    from kit.observability import HealthServer

    configure_logging(SERVICE)
    torch.set_num_threads(int(os.environ.get("ENTRAIN_INFERENCE_THREADS", "1")))
    kafka = KafkaSettings.from_env()
    producer = Producer(kafka, SERVICE)
    registry = ModelRegistry(kafka)
    registry.refresh(until_caught_up_s=30)
    admission = Admission(target_load=float(os.environ.get("ENTRAIN_INFERENCE_TARGET_LOAD", "0.75")))
    service = InferenceService(kafka, Engine(), store_from_env(), producer, registry, admission=admission,
                               delivered=DeliveredSlack(kafka))
    service.warm_up()
    log.info("soundfont", path=soundfont_path())
    service.consent.catch_up()  # every withdrawal on the topic is seen before the first request
    service.refusal(int(time.time() * 1000))  # load the registry's current version before the first request
    log.info("catalog_published", works=service.publish_catalog())
    loop = ConsumerLoop(kafka, SERVICE, os.environ.get("ENTRAIN_INFERENCE_GROUP", kafka.group("inference")),
                        ["soundtrack.requests.v1"], lambda r: None, producer, batch_handler=service.handle,
                        batch_size=16, deadline_of=soundtrack_deadline, version_of=soundtrack_position,
                        replacement_delay_ms=REPLACEMENT_DELAY_MS, check=invalid_request)
    health = HealthServer.for_service(ServiceSettings.from_env("inference", 9103)).start()
    health.add_ready_check("kafka", lambda: producer.reachable(2.0))
    signal.signal(signal.SIGTERM, loop.stop)
    signal.signal(signal.SIGINT, loop.stop)
    loop.run()
    health.stop()
