"""One segment id names one audio, also across a SIGKILL of inference mid-session: the replay
answers from the generation log, a fresh store generates byte-identical audio for the same
requests, and provenance is the same everywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from tests.integration.inference.test_inference_service import grant_everyone
from tests.kafka_helpers import read_to_end
from tests.pipeline import free_port

from inference.engine import Engine
from inference.service import InferenceService, segment_id_for
from kit.consumer import ConsumerLoop
from kit.producer import Producer
from kit.serde import TopicSerde
from kit.settings import REPO_ROOT, KafkaSettings
from kit.store import FileStore

SEGMENTS_PER_LISTENER, LISTENERS = 16, 4  # ~7 min of audio: a few seconds of work, killed early in it


def session_requests() -> list[dict[str, Any]]:
    """Two listeners' sessions, each request continuing the previous one (as the scheduler chains them)."""
    now = int(time.time() * 1000)
    out = []
    for listener in range(LISTENERS):
        previous = None
        for n in range(SEGMENTS_PER_LISTENER):
            request_id = f"req-{uuid.uuid4().hex}"
            out.append({"request_id": request_id, "listener_id": f"{listener}" * 64, "session_id": f"s-{listener}",
                        "sequence": n, "previous_segment_id": previous,
                        "params": {"tempo_bpm": 90.0 + 6 * n, "energy": round(0.2 + 0.05 * n, 2), "mode": "MAJOR",
                                   "key_tonic": 2, "bars": 2 + n % 3},
                        "seed": 7000 + 100 * listener + n, "requested_at": now, "deadline": now + 600_000,
                        "policy_reason": "test"})
            previous = segment_id_for(request_id)
    return out


def generated(kafka: KafkaSettings) -> list[dict[str, Any]]:
    serde = TopicSerde.for_topic("soundtrack.segments.generated.v1", kafka)
    return [v for v in (serde.decode_value(m.value()) for m in read_to_end(kafka, serde.topic)) if v is not None]


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_a_replay_after_a_sigkill_yields_the_same_audio_and_provenance(isolated: KafkaSettings,
                                                                       tmp_path: Path) -> None:
    producer = Producer(isolated, "test")
    grant_everyone(producer, TopicSerde.for_topic("catalog.consent.v1", isolated), int(time.time() * 1000) - 60_000)
    requests = session_requests()
    serde = TopicSerde.for_topic("soundtrack.requests.v1", isolated)
    for request in requests:
        producer.produce(serde, {"listener_id": request["listener_id"]}, request)
    assert producer.flush(30) == 0
    wanted = {segment_id_for(r["request_id"]) for r in requests}

    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "services"), "ENTRAIN_TOPIC_PREFIX": isolated.topic_prefix,
           "ENTRAIN_SEGMENT_STORE": str(store), "ENTRAIN_INFERENCE_GROUP": f"inf-{uuid.uuid4().hex[:6]}",
           "ENTRAIN_INFERENCE_METRICS_PORT": str(free_port())}

    def launch() -> subprocess.Popen[bytes]:
        with open(tmp_path / "inference.log", "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "inference"], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=REPO_ROOT)

    process = launch()
    try:
        deadline = time.monotonic() + 120
        while not generated(isolated):  # the first segments are out: kill now, mid-session
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "inference.log").read_text()
            time.sleep(0.3)
        process.send_signal(signal.SIGKILL)
        process.wait()
        done_before_kill = {r["segment_id"] for r in generated(isolated)}
        assert done_before_kill < wanted  # the kill was mid-session
        process = launch()  # the same group: the uncommitted requests are consumed again
        while not wanted <= {r["segment_id"] for r in generated(isolated)}:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "inference.log").read_text()
            time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)

    first = generated(isolated)
    by_id: dict[str, set[tuple[str, str]]] = {}
    for record in first:
        by_id.setdefault(record["segment_id"], set()).add((record["audio"]["sha256"], repr(record["provenance"])))
    assert set(by_id) == wanted and all(len(v) == 1 for v in by_id.values())  # duplicates, if any, are identical

    # Replayed again (a new group reads every request): answered from the log, nothing generated.
    generated_before, replayed_before = counter("entrain_inference_segments_total"), counter(
        "entrain_inference_segments_replayed_total")
    engine = Engine()
    replay_producer = Producer(isolated, "inference")
    service = InferenceService(isolated, engine, FileStore(store), replay_producer)
    ConsumerLoop(isolated, "inference", f"replay-{uuid.uuid4().hex[:6]}", ["soundtrack.requests.v1"], lambda r: None,
                 replay_producer, batch_handler=service.handle).run(idle_timeout_s=5)
    assert counter("entrain_inference_segments_total") == generated_before
    assert counter("entrain_inference_segments_replayed_total") - replayed_before == len(requests)

    # A fresh store and no kill: the same requests give byte-identical audio and provenance.
    fresh = InferenceService(isolated, engine, FileStore(tmp_path / "fresh"), replay_producer)
    ConsumerLoop(isolated, "inference", f"fresh-{uuid.uuid4().hex[:6]}", ["soundtrack.requests.v1"], lambda r: None,
                 replay_producer, batch_handler=fresh.handle).run(idle_timeout_s=5)
    for record in generated(isolated):
        assert (record["audio"]["sha256"], repr(record["provenance"])) in by_id[record["segment_id"]], record
    assert sum(1 for r in generated(isolated) if str(tmp_path / "fresh") in r["audio"]["uri"]) == len(requests)
