"""Reference data and plays for royalty tests: a small demo catalog on real topics."""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from typing import Any

from confluent_kafka import Producer as RawProducer

from kit.contracts import contract
from kit.producer import DEFAULT_CONFIG, Producer
from kit.serde import TopicSerde
from kit.settings import KafkaSettings
from royalty.rules import SegmentFacts

HOLDERS = [f"rh-t{n}" for n in range(8)]
LISTENERS = [hashlib.sha256(f"listener-{n}".encode()).hexdigest() for n in range(16)]
SEGMENT_MS = 8_000


def work_record(n: int) -> dict[str, Any]:
    a, b, c = HOLDERS[n % 8], HOLDERS[(n + 3) % 8], HOLDERS[(n + 5) % 8]
    return {"work_id": f"wk-{n}", "title": f"Work {n}", "composer": None, "collection": "test", "source": "test",
            "content_sha256": f"{n:064x}", "license": "public-domain", "demo_data": True, "updated_at": 0,
            "shares": [{"rights_holder_id": a, "right_type": "COMPOSITION", "share_ppm": 1_000_000},
                       {"rights_holder_id": b, "right_type": "RECORDING", "share_ppm": 700_001},
                       {"rights_holder_id": c, "right_type": "RECORDING", "share_ppm": 299_999}]}


def segment_record(segment_id: str, works: list[tuple[str, int]], listener: str = LISTENERS[0]) -> dict[str, Any]:
    return {
        "segment_id": segment_id, "request_id": "r", "listener_id": listener, "session_id": "s", "sequence": 0,
        "params": {"tempo_bpm": 120.0, "energy": 0.5, "mode": "MAJOR", "key_tonic": 0, "bars": 4},
        "audio": {"uri": "file:///x", "sha256": "0" * 64, "format": "WAV", "sample_rate_hz": 44100, "channels": 2,
                  "duration_ms": SEGMENT_MS},
        "provenance": {"model_id": "m", "model_version": "1", "training_manifest_sha256": "0" * 64, "seed": 1,
                       "influences": [{"work_id": w, "weight_ppm": p} for w, p in works]},
        "generated_at": int(time.time() * 1000) - 7_200_000, "deadline": 0, "source_sha256": "0" * 64,
        "watermark": {"key_id": "k", "payload_hex": "00", "verification_score": 1.0, "verified_at": 0},
    }


def consent_record(holder: str, generation: bool, effective_from: int, work_id: str | None = None) -> dict[str, Any]:
    return {"rights_holder_id": holder, "work_id": work_id, "ai_training": True, "ai_generation": generation,
            "likeness": False, "effective_from": effective_from, "updated_at": effective_from,
            "change_id": str(uuid.uuid4())}


def play_record(play_id: str, segment_id: str | None, started_at: int, *, work_id: str | None = None,
                ms_played: int = 45_000, territory: str = "DE", tier: str = "PREMIUM",
                fraud: tuple[str, ...] = (), listener: str = LISTENERS[0]) -> dict[str, Any]:
    """A play; by default of LISTENERS[0], to whom seg-0 (and every add_segment) was delivered."""
    return {"play_id": play_id, "listener_id": listener, "content_kind": "AI_SEGMENT" if segment_id else "CATALOG_WORK",
            "segment_id": segment_id, "work_id": work_id, "started_at": started_at, "ms_played": ms_played,
            "completed": True, "territory": territory, "subscription_tier": tier, "fraud_flags": list(fraud),
            "received_time": started_at + ms_played}


class Catalog:
    """Publishes works, consent and segments for ``works`` works and ``segments`` segments
    (segment n delivered to LISTENERS[n % 16])."""

    def __init__(self, kafka: KafkaSettings, works: int = 12, segments: int = 50, seed: int = 7) -> None:
        self.kafka, self.producer = kafka, Producer(kafka, "test")
        self.rng = random.Random(seed)
        self.segments: dict[str, list[tuple[str, int]]] = {}
        self.listener_of: dict[str, str] = {}
        self.published: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
        for n in range(works):
            self.produce("catalog.works.v1", {"work_id": f"wk-{n}"}, work_record(n))
        for holder in HOLDERS:
            self.produce("catalog.consent.v1", {"rights_holder_id": holder, "work_id": None},
                         consent_record(holder, True, 0))
        for s in range(segments):
            chosen = self.rng.sample(range(works), 3)
            weights = [500_000, 300_000, 200_000]
            self.add_segment(f"seg-{s}", [(f"wk-{w}", weights[i]) for i, w in enumerate(chosen)],
                             LISTENERS[s % len(LISTENERS)])
        assert self.producer.flush(30) == 0

    def produce(self, topic: str, key: dict[str, Any], value: dict[str, Any] | None) -> None:
        self.producer.produce(TopicSerde.for_topic(topic, self.kafka), key, value)
        self.published.append((topic, key, value))

    def add_segment(self, segment_id: str, works: list[tuple[str, int]], listener: str = LISTENERS[0]) -> None:
        self.segments[segment_id] = works
        self.listener_of[segment_id] = listener
        self.produce("soundtrack.segments.v1", {"listener_id": listener}, segment_record(segment_id, works, listener))

    def plays(self, n: int, started_at: int | None = None) -> list[dict[str, Any]]:
        """Plays as listeners make them: each of a segment delivered to its listener, heard to the end,
        one after the other on that listener's clock (so no two of a listener's plays overlap)."""
        start = started_at or int(time.time() * 1000) - 3_600_000
        clock: dict[str, int] = {}
        out = []
        for _ in range(n):
            segment = self.rng.choice(list(self.segments))
            listener = self.listener_of[segment]
            at = clock.get(listener, start)
            clock[listener] = at + SEGMENT_MS
            out.append(play_record(str(uuid.uuid4()), segment, at, listener=listener))
        return out

    def send_plays(self, plays: list[dict[str, Any]], producer: Producer | None = None) -> None:
        producer = producer or self.producer
        serde = TopicSerde.for_topic("listener.plays.v1", self.kafka)
        for play in plays:
            producer.produce(serde, {"listener_id": play["listener_id"]}, play)  # keyed by listener, as ingest does
            producer.poll(0)
        assert producer.flush(60) == 0


LEDGER_SEGMENT_MS = 3_000


def write_ledger(kafka: KafkaSettings, n: int, listeners: int = 2_000) -> tuple[list[str], dict[str, SegmentFacts]]:
    """``n`` ledger entries shaped like production's: PAID plays of 3-second AI segments, each listener's
    one after the other, a listener's on one partition. Returns the play ids and the segment facts
    royalty would hold for them after its start-up catch-up."""
    serde = TopicSerde.for_topic("royalty.play-ledger.v1", kafka)
    partitions = contract("royalty.play-ledger.v1").partitions
    example = next(v["value"] for name, v in contract("royalty.play-ledger.v1").examples()
                   if name == "paid-ai-segment.json")
    producer = RawProducer({**kafka.client_config(), **DEFAULT_CONFIG})
    start = int(time.time() * 1000) - 86_400_000
    play_ids, segments = [], {}
    for i in range(n):
        play_id, segment_id, listener = str(uuid.uuid4()), f"seg-{i:024x}", i % listeners
        at = start + (i // listeners) * LEDGER_SEGMENT_MS
        segments[segment_id] = SegmentFacts(f"{listener:064x}", LEDGER_SEGMENT_MS, (("wk-1", 1_000_000),), at)
        value = {**example, "play_id": play_id, "segment_id": segment_id, "play_started_at": at,
                 "heard_ms": LEDGER_SEGMENT_MS, "paid_ms": LEDGER_SEGMENT_MS}
        producer.produce(serde.topic, key=serde.encode_key({"play_id": play_id}), value=serde.encode_value(value),
                         partition=listener % partitions)
        play_ids.append(play_id)
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("ledger entries not acknowledged")
    return play_ids, segments
