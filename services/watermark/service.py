"""Watermark: soundtrack.segments.generated.v1 -> soundtrack.segments.v1.

For every generated segment: fetch its audio from the segment store, embed the active
key's mark with payload = the first 32 bits of SHA-256(segment id), decode the result
with the detector, and only if the decoded payload and key match store the marked
audio, encode its delivery rendition (an AAC fMP4 fragment of the session's gapless stream,
``watermark.rendition``), register the generation record on watermark.registry.v1 (the provenance
registry every instance and detection API materialises), and produce the watermarked segment.
A segment that cannot be marked or does not verify goes to the DLQ with the reason and never
downstream. Idempotent: the same segment produces the
same bytes, the same store URI and the same record.

Segments are held across polls and marked earliest deadline first (``kit.deadlines``): one
that is too late to play (past its deadline by more than the player's margin) waits until no
on-time segment is held, and an older version of a position the scheduler has replaced (a newer
version is held) is skipped.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from typing import Any

import structlog
from prometheus_client import Counter, Histogram

from kit.audio import AudioError, decode_bytes, encode_wav
from kit.auth import KeyStore, api_keys
from kit.consumer import ConsumerLoop, InvalidRecord, Record
from kit.deadlines import PLAYER_MARGIN_MS, REPLACEMENT_DELAY_MS, soundtrack_deadline, soundtrack_position
from kit.media import MediaError
from kit.producer import Producer
from kit.ratelimit import RateLimiter
from kit.serde import TopicSerde
from kit.settings import KafkaSettings, ServiceSettings
from kit.store import SegmentStore, StoreError, store_from_env
from watermark.keys import KeyRing
from watermark.registry import RegistryIndex, RegistryWriter
from watermark.rendition import Renditions
from watermark.scheme import SAMPLE_RATE, embed, verify

log = structlog.get_logger()
SERVICE = "watermark"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
EMBED_SECONDS = Histogram("entrain_watermark_embed_seconds", "Time to embed the mark in one segment.",
                          buckets=LATENCY_BUCKETS)
VERIFY_SECONDS = Histogram("entrain_watermark_verify_seconds", "Time to decode a freshly marked segment.",
                           buckets=LATENCY_BUCKETS)
VERIFICATION_FAILURES = Counter("entrain_watermark_verification_failures_total",
                                "Marked segments that did not decode to their own payload (sent to the DLQ).")
SEGMENTS = Counter("entrain_watermark_segments_total", "Segments marked, verified and published.")


def payload_for(segment_id: str) -> int:
    return int.from_bytes(hashlib.sha256(segment_id.encode()).digest()[:4], "big")


class WatermarkService:
    def __init__(self, kafka: KafkaSettings, keys: KeyRing, store: SegmentStore, registry: RegistryWriter,
                 producer: Producer) -> None:
        self.keys, self.store, self.registry, self.producer = keys, store, registry, producer
        self.renditions = Renditions(store)
        self.out = TopicSerde.for_topic("soundtrack.segments.v1", kafka)

    def handle(self, record: Record) -> None:
        segment = record.value
        if segment is None:
            raise InvalidRecord("generated segment is a tombstone")
        try:
            data = self.store.get(segment["audio"]["uri"])
        except (StoreError, OSError) as exc:
            raise InvalidRecord(f"audio not readable from the store: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != segment["audio"]["sha256"]:
            raise InvalidRecord("audio bytes do not match the record's sha256")
        try:
            audio, rate = decode_bytes(data)
            if rate != SAMPLE_RATE:
                raise AudioError(f"sample rate {rate} Hz; the service marks {SAMPLE_RATE} Hz audio")
            key, payload = self.keys.active, payload_for(segment["segment_id"])
            started = time.perf_counter()
            marked = embed(audio, key, payload)
            EMBED_SECONDS.observe(time.perf_counter() - started)
            started = time.perf_counter()
            # At the alignment embed used, against the threshold the public detector applies with the whole ring.
            found = verify(marked, SAMPLE_RATE, key, ring_size=len(self.keys.keys))
            VERIFY_SECONDS.observe(time.perf_counter() - started)
        except AudioError as exc:
            raise InvalidRecord(f"cannot watermark: {exc}") from exc
        if not (found.detected and found.payload == payload and found.key_id == key.key_id):
            VERIFICATION_FAILURES.inc()
            log.error("verification_failed", segment_id=segment["segment_id"], score=found.score)
            raise InvalidRecord(f"verification failed: decoded payload {found.payload} with score "
                                f"{found.score:.2f}, expected {payload:08x} under key {key.key_id}")
        wav = encode_wav(marked, SAMPLE_RATE, "PCM_16")
        uri, digest = self.store.put(wav, "wav")
        try:
            # from the stored 16-bit master, as a successor's pre-roll read back after a restart is
            rendition = self.renditions.make(segment, decode_bytes(wav)[0], digest)
        except MediaError as exc:
            raise InvalidRecord(f"cannot make the delivery rendition: {exc}") from exc
        value = self._record(segment, uri, digest, key.key_id, f"{payload:08x}", found.score, rendition)
        # No listener or session id in the registry: detections answer anyone with an API key.
        self.registry.publish(key.key_id, f"{payload:08x}", value)
        self.producer.produce(self.out, {"listener_id": segment["listener_id"]}, value)
        SEGMENTS.inc()

    @staticmethod
    def _record(segment: dict[str, Any], uri: str, digest: str, key_id: str, payload_hex: str, score: float,
                rendition: dict[str, Any]) -> dict[str, Any]:
        audio = dict(segment["audio"], uri=uri, sha256=digest, format="WAV")
        return {**segment, "audio": audio, "source_sha256": segment["audio"]["sha256"], "rendition": rendition,
                "previous_segment_id": segment.get("previous_segment_id"),
                "watermark": {"key_id": key_id, "payload_hex": payload_hex, "verification_score": float(score),
                              "verified_at": int(time.time() * 1000)}}


def main() -> None:
    from kit.logs import configure_logging
    from kit.observability import HealthServer

    configure_logging(SERVICE)
    kafka = KafkaSettings.from_env()
    producer = Producer(kafka, SERVICE)
    keys = KeyRing.from_env()
    log.info("keys_loaded", active=keys.active.key_id, keys=[k.key_id for k in keys.keys])
    service = WatermarkService(kafka, keys, store_from_env(), RegistryWriter(kafka, producer), producer)
    index = RegistryIndex(kafka).start()  # what the detection API looks payloads up in
    loop = ConsumerLoop(kafka, SERVICE, os.environ.get("ENTRAIN_WATERMARK_GROUP", kafka.group("watermark")),
                        ["soundtrack.segments.generated.v1"], service.handle, producer, batch_size=8,
                        deadline_of=soundtrack_deadline, version_of=soundtrack_position,
                        deadline_grace_ms=PLAYER_MARGIN_MS,
                        replacement_delay_ms=REPLACEMENT_DELAY_MS)
    health = HealthServer.for_service(ServiceSettings.from_env("watermark", 9104)).start()
    health.add_ready_check("kafka", lambda: producer.reachable(2.0))
    health.add_ready_check("provenance-index", lambda: index.healthy)
    detect_server = serve_detection(keys, index, api_keys(os.environ),
                                    os.environ.get("ENTRAIN_METRICS_HOST", "127.0.0.1"),
                                    int(os.environ.get("ENTRAIN_WATERMARK_DETECT_PORT", "8084")))
    health.add_ready_check("detect-api", lambda: detect_server.started)
    signal.signal(signal.SIGTERM, loop.stop)
    signal.signal(signal.SIGINT, loop.stop)
    loop.run()
    detect_server.should_exit = True
    health.stop()


def serve_detection(keys: KeyRing, index: RegistryIndex, api: KeyStore, host: str, port: int) -> Any:
    """The public detection endpoint (POST /v1/detect) in a daemon thread."""
    import threading

    import uvicorn

    from watermark.detector import DETECTION_BURST, DETECTIONS_PER_S, http_app

    rate = float(os.environ.get("ENTRAIN_WATERMARK_DETECTIONS_PER_S", DETECTIONS_PER_S))
    limiter = RateLimiter(rate, max(rate * 4, DETECTION_BURST))
    app = http_app(keys, index, api, limiter)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    threading.Thread(target=server.run, name="detect-http", daemon=True).start()
    return server
