"""Inference on the real broker: requests become stored, attributed segments; late and bad
requests never become segments; consent withdrawals shape the influence weights."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import pytest
from tests.kafka_helpers import read_all

from inference.catalog import load_catalog
from inference.engine import Engine
from inference.service import InferenceService, segment_id_for
from kit.consumer import ConsumerLoop
from kit.producer import Producer
from kit.serde import TopicSerde
from kit.settings import KafkaSettings
from kit.store import FileStore

ENGINE = Engine()


def request(n: int, **changes: Any) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {"request_id": f"req-{uuid.uuid4().hex}", "listener_id": "l" * 64, "session_id": "s-1", "sequence": n,
            "previous_segment_id": None, "params": {"tempo_bpm": 150.0, "energy": 0.7, "mode": "MINOR",
                                                    "key_tonic": 9, "bars": 4},
            "seed": 1000 + n, "requested_at": now, "deadline": now + 60_000, "policy_reason": "test", **changes}


def grant_everyone(producer: Producer, consent: TopicSerde, at_ms: int) -> None:
    """Every demo rights holder grants generation (opt-in: without a record nothing is generated)."""
    for holder in sorted({h for w in load_catalog() for h in w.rights_holders}):
        producer.produce(consent, {"rights_holder_id": holder, "work_id": None},
                         {"rights_holder_id": holder, "work_id": None, "ai_training": True, "ai_generation": True,
                          "likeness": False, "effective_from": at_ms, "updated_at": at_ms,
                          "change_id": str(uuid.uuid4())})


def run(kafka: KafkaSettings, tmp_path: Any) -> InferenceService:
    producer = Producer(kafka, "inference")
    service = InferenceService(kafka, ENGINE, FileStore(tmp_path), producer)
    ConsumerLoop(kafka, "inference", f"inf-{uuid.uuid4().hex[:6]}", ["soundtrack.requests.v1"], lambda r: None,
                 producer, batch_handler=service.handle).run(idle_timeout_s=6)
    return service


def test_requests_become_stored_attributed_segments_and_bad_ones_do_not(isolated: KafkaSettings,
                                                                        tmp_path: Any) -> None:
    requests = TopicSerde.for_topic("soundtrack.requests.v1", isolated)
    producer = Producer(isolated, "test")
    grant_everyone(producer, TopicSerde.for_topic("catalog.consent.v1", isolated), int(time.time() * 1000) - 60_000)
    good = [request(0), request(1)]
    late = request(2, deadline=int(time.time() * 1000) - 1)
    bad = request(3, params={**good[0]["params"], "tempo_bpm": 900.0})
    for r in [*good, late, bad]:
        producer.produce(requests, {"listener_id": r["listener_id"]}, r)
    producer.produce_raw(requests.topic, requests.encode_key({"listener_id": "x"}), b"not a request")
    assert producer.flush(30) == 0
    service = run(isolated, tmp_path)

    out = TopicSerde.for_topic("soundtrack.segments.generated.v1", isolated)
    segments = {v["request_id"]: v for v in (out.decode_value(m.value()) for m in read_all(isolated, out.topic, 3, 8))}
    assert set(segments) == {r["request_id"] for r in good}
    for r in good:
        segment = segments[r["request_id"]]
        assert segment["segment_id"] == segment_id_for(r["request_id"])
        data = service.store.get(segment["audio"]["uri"])
        assert hashlib.sha256(data).hexdigest() == segment["audio"]["sha256"]
        assert segment["audio"]["duration_ms"] == 6400  # 4 bars at 150 BPM
        influences = segment["provenance"]["influences"]
        assert sum(i["weight_ppm"] for i in influences) == 1_000_000
        assert segment["provenance"]["model_version"] == ENGINE.model_version
    dead = {dict(m.headers())["dlq.reason"].decode() for m in read_all(isolated, isolated.topic(
        "soundtrack.requests.v1.dlq"), 2)}
    assert any("tempo_bpm 900.0 outside" in d for d in dead)
    assert any("not in Confluent wire format" in d for d in dead)


def test_a_generation_opt_out_removes_the_holder_s_works_from_the_weights(isolated: KafkaSettings,
                                                                          tmp_path: Any) -> None:
    producer = Producer(isolated, "test")
    consent = TopicSerde.for_topic("catalog.consent.v1", isolated)
    everyone = {h for w in load_catalog() for h in w.rights_holders}
    opted_out = sorted(everyone)[:12]  # half the demo holders withdraw generation consent
    now = int(time.time() * 1000) - 1000
    grant_everyone(producer, consent, now - 60_000)
    for holder in opted_out:
        producer.produce(consent, {"rights_holder_id": holder, "work_id": None},
                         {"rights_holder_id": holder, "work_id": None, "ai_training": True, "ai_generation": False,
                          "likeness": False, "effective_from": now, "updated_at": now, "change_id": str(uuid.uuid4())})
    requests = TopicSerde.for_topic("soundtrack.requests.v1", isolated)
    for n in range(4):
        r = request(n)
        producer.produce(requests, {"listener_id": r["listener_id"]}, r)
    assert producer.flush(30) == 0
    run(isolated, tmp_path)
    out = TopicSerde.for_topic("soundtrack.segments.generated.v1", isolated)
    holders_of = {w.work_id: w.rights_holders for w in load_catalog()}
    for m in read_all(isolated, out.topic, 4, 8):
        for influence in out.decode_value(m.value())["provenance"]["influences"]:
            assert not holders_of[influence["work_id"]] & set(opted_out)


@pytest.fixture(autouse=True)
def _quiet_torch() -> None:
    import torch

    torch.set_num_threads(1)


def test_without_any_consent_record_nothing_is_generated(isolated: KafkaSettings, tmp_path: Any) -> None:
    requests = TopicSerde.for_topic("soundtrack.requests.v1", isolated)
    producer = Producer(isolated, "test")
    r = request(0)
    producer.produce(requests, {"listener_id": r["listener_id"]}, r)
    assert producer.flush(30) == 0
    run(isolated, tmp_path)
    out = TopicSerde.for_topic("soundtrack.segments.generated.v1", isolated)
    assert read_all(isolated, out.topic, 1, 4) == []
    dead = [dict(m.headers())["dlq.reason"].decode() for m in read_all(isolated, isolated.topic(
        "soundtrack.requests.v1.dlq"), 1)]
    assert dead and "consent" in dead[0]
