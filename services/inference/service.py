"""Inference: soundtrack.requests.v1 -> soundtrack.segments.generated.v1.

Each poll's requests are generated together (micro-batch: one batched model step per
token). A request already past its deadline is dropped (metric, log), never generated
late. Audio goes to the segment store; the record carries its URI, SHA-256, duration
and provenance. At start-up the demo catalog is published to catalog.works.v1.

Generation consent: the model's consent snapshot is the baseline; live records on
catalog.consent.v1 override it (a per-work record over a catalog-wide one). Works
with any rights holder without generation consent get no influence weight.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from typing import Any

import structlog
import torch
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from inference.catalog import ConsentSnapshot, load_catalog
from inference.engine import Engine, Job, Params
from inference.wav import wav_bytes
from kit.consumer import ConsumerLoop, Record
from kit.producer import Producer
from kit.serde import DecodeError, TopicSerde
from kit.settings import KafkaSettings, ServiceSettings
from kit.store import FileStore, SegmentStore

log = structlog.get_logger()
SERVICE = "inference"

GENERATION_SECONDS = Histogram("entrain_inference_generation_seconds", "Time to generate and render one batch.",
                               buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
REAL_TIME_FACTOR = Gauge("entrain_inference_real_time_factor", "Seconds of audio per second of compute, last batch.")
DEADLINE_MISSES = Counter("entrain_inference_deadline_misses_total", "Requests dropped because their deadline passed.")
SEGMENTS = Counter("entrain_inference_segments_total", "Segments generated.")
QUEUE_DEPTH = Gauge("entrain_inference_batch_size", "Requests in the last micro-batch.")


class GenerationConsent:
    """The snapshot baseline plus live consent records (latest per scope, in effect now)."""

    def __init__(self, kafka: KafkaSettings, snapshot: ConsentSnapshot) -> None:
        self.snapshot = snapshot
        self.live: dict[tuple[str, str | None], tuple[int, bool]] = {}
        self.serde = TopicSerde.for_topic("catalog.consent.v1", kafka)
        self.consumer = Consumer({**kafka.client_config(), "group.id": "inference-consent-reader",
                                  "enable.auto.commit": False, "isolation.level": "read_committed"})
        parts = self.consumer.list_topics(self.serde.topic, timeout=30).topics[self.serde.topic].partitions
        self.consumer.assign([TopicPartition(self.serde.topic, p, OFFSET_BEGINNING) for p in parts])

    def refresh(self) -> None:
        for msg in self.consumer.consume(1000, 0):
            if msg.error() is not None:
                continue
            try:
                key = self.serde.decode_key(msg.key())
                value = self.serde.decode_value(msg.value())
            except DecodeError:
                continue  # ingest's DLQ is where bad consent records are handled
            scope = (key["rights_holder_id"], key["work_id"])
            if value is None:
                self.live.pop(scope, None)
            else:
                self.live[scope] = (value["effective_from"], value["ai_generation"])

    def allows(self, holder: str, work_id: str, now_ms: int) -> bool:
        for scope in ((holder, work_id), (holder, None)):
            record = self.live.get(scope)
            if record is not None and record[0] <= now_ms:
                return record[1]
        return holder not in self.snapshot.no_generation

    def allowed_works(self, now_ms: int) -> set[str]:
        return {w.work_id for w in load_catalog() if all(self.allows(h, w.work_id, now_ms) for h in w.rights_holders)}


def segment_id_for(request_id: str) -> str:
    return "seg-" + hashlib.sha256(request_id.encode()).hexdigest()[:24]


class InferenceService:
    def __init__(self, kafka: KafkaSettings, engine: Engine, store: SegmentStore, producer: Producer) -> None:
        self.kafka, self.engine, self.store, self.producer = kafka, engine, store, producer
        self.out = TopicSerde.for_topic("soundtrack.segments.generated.v1", kafka)
        self.consent = GenerationConsent(kafka, ConsentSnapshot.load())

    def publish_catalog(self) -> int:
        serde, now = TopicSerde.for_topic("catalog.works.v1", self.kafka), int(time.time() * 1000)
        for work in load_catalog():
            self.producer.produce(serde, {"work_id": work.work_id}, work.record(now))
        self.producer.flush(30)
        return len(load_catalog())

    def handle(self, records: list[Record]) -> list[str | None]:
        """Generate every live request of a poll together; per record None or the reason it is invalid."""
        now = int(time.time() * 1000)
        self.consent.refresh()
        reasons: list[str | None] = [None] * len(records)
        jobs, requests, slots = [], [], []
        for i, record in enumerate(records):
            request = record.value
            if request is None:
                reasons[i] = "request is a tombstone"
                continue
            if request["deadline"] <= now:
                DEADLINE_MISSES.inc()
                log.warning("deadline_missed", request_id=request["request_id"], late_ms=now - request["deadline"])
                continue
            try:
                p = request["params"]
                params = Params(float(p["tempo_bpm"]), float(p["energy"]), p["mode"], int(p["key_tonic"]),
                                int(p["bars"]))
            except ValueError as exc:
                reasons[i] = f"invalid params: {exc}"
                continue
            jobs.append(Job(params, request["seed"], request["previous_segment_id"],
                            segment_id_for(request["request_id"])))
            requests.append(request)
            slots.append(i)
        if not jobs:
            return reasons
        allowed = self.consent.allowed_works(now)
        if not allowed:
            for i in slots:
                reasons[i] = "no catalog work has AI-generation consent: cannot attribute a segment"
            return reasons
        QUEUE_DEPTH.set(len(jobs))
        started = time.perf_counter()
        segments = self.engine.generate_batch(jobs, allowed)
        elapsed = time.perf_counter() - started
        GENERATION_SECONDS.observe(elapsed)
        REAL_TIME_FACTOR.set(sum(s.duration_ms for s in segments) / 1000 / max(elapsed, 1e-9))
        for job, request, segment in zip(jobs, requests, segments, strict=True):
            uri, digest = self.store.put(wav_bytes(segment.rendered.audio), "wav")
            self.producer.produce(self.out, {"listener_id": request["listener_id"]},
                                  self._record(job, request, segment, uri, digest))
            SEGMENTS.inc()
        return reasons

    def _record(self, job: Job, request: dict[str, Any], segment: Any, uri: str, digest: str) -> dict[str, Any]:
        return {
            "segment_id": job.segment_id, "request_id": request["request_id"],
            "listener_id": request["listener_id"], "session_id": request["session_id"],
            "sequence": request["sequence"], "params": request["params"],
            "audio": {"uri": uri, "sha256": digest, "format": "WAV", "sample_rate_hz": 44100, "channels": 2,
                      "duration_ms": segment.duration_ms},
            "provenance": {"model_id": self.engine.model_id, "model_version": self.engine.model_version,
                           "training_manifest_sha256": self.engine.manifest_sha256, "seed": request["seed"],
                           "influences": [{"work_id": w, "weight_ppm": p} for w, p in segment.influences]},
            "generated_at": int(time.time() * 1000), "deadline": request["deadline"],
        }


def main() -> None:
    from kit.logs import configure_logging
    from kit.observability import HealthServer

    configure_logging(SERVICE)
    torch.set_num_threads(int(os.environ.get("ENTRAIN_INFERENCE_THREADS", "1")))
    kafka = KafkaSettings.from_env()
    producer = Producer(kafka, SERVICE)
    service = InferenceService(kafka, Engine(), FileStore(), producer)
    log.info("catalog_published", works=service.publish_catalog())
    loop = ConsumerLoop(kafka, SERVICE, os.environ.get("ENTRAIN_INFERENCE_GROUP", kafka.group("inference")),
                        ["soundtrack.requests.v1"], lambda r: None, producer, batch_handler=service.handle,
                        batch_size=16)
    health = HealthServer.for_service(ServiceSettings.from_env("inference", 9103)).start()
    health.add_ready_check("kafka", lambda: producer.reachable(2.0))
    signal.signal(signal.SIGTERM, loop.stop)
    signal.signal(signal.SIGINT, loop.stop)
    loop.run()
    health.stop()
