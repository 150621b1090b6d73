"""Adaptation delay of the whole pipeline on the local broker, and one soundtrack worker's throughput.

Phase 1 (step change): N listeners rest (70 bpm, no cadence) for --rest-s, then all start
running at 170 spm at once; telemetry goes through ingest every second per listener.
For each listener:
  designed   the instant the policy (run in this process on the same samples and times,
             stepping every 10 ms) would first emit a request with the new tempo: the
             hold, plus waiting for the segment boundary the request belongs to
  request    Kafka timestamp of the first request with the new tempo (soundtrack worker)
  ready      when the first watermarked segment at the new tempo reached soundtrack.segments.v1
             (inference + watermark), read by this process
  request_delay = request - designed (the system part); segment_ready = ready - designed
Underruns: segments that reached a playlist after their deadline (delivery) plus requests
inference dropped because their deadline had passed (the player gets nothing for them).

Phase 2 (throughput): inference and watermark are stopped; E telemetry events for 2,000
listeners are produced to listener.telemetry.v1 as fast as possible; the worker's rate is E
over the time until its committed offsets cover them all. Baseline in the same run: a raw
confluent-kafka consumer decoding the same events.
Last line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, TopicPartition
from tests.pipeline import Pipeline

from kit.auth import Pseudonymizer
from kit.producer import Producer
from kit.serde import TopicSerde
from kit.settings import KafkaSettings
from kit.topics import delete_prefixed_topics, ensure_topics
from soundtrack.policy import HOLD_MS
from soundtrack.schedule import ListenerState, due_requests, observe


def post(url: str, key: str, body: Any) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=15) as response:
        assert response.status == 202, response.read()


class Follower(threading.Thread):
    """Records (arrival wall ms, Kafka timestamp ms, value) of every record on a topic from now on."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        super().__init__(daemon=True)
        self.serde = TopicSerde.for_topic(topic, kafka)
        self.records: list[tuple[int, int, dict[str, Any]]] = []
        self.stop = threading.Event()
        self.consumer = Consumer({**kafka.client_config(), "group.id": f"bench-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False})
        parts = self.consumer.list_topics(self.serde.topic, timeout=30).topics[self.serde.topic].partitions
        self.consumer.assign([TopicPartition(self.serde.topic, p, OFFSET_END) for p in parts])

    def run(self) -> None:
        while not self.stop.is_set():
            msg = self.consumer.poll(0.1)
            if msg is not None and msg.error() is None:
                self.records.append((int(time.time() * 1000), msg.timestamp()[1], self.serde.decode_value(msg.value())))
        self.consumer.close()


def p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(0.99 * len(values)))] if values else float("nan")


def step_change(pipeline: Pipeline, listeners: int, rest_s: float, run_s: float) -> dict[str, Any]:
    kafka = pipeline.kafka
    secret = bytes.fromhex((pipeline.workdir / "pseudonym.secret").read_text().strip())
    users = [f"bench-{i:03d}" for i in range(listeners)]
    ids = {u: Pseudonymizer(secret).listener_id(u) for u in users}
    by_id = {listener: user for user, listener in ids.items()}
    requests, segments = Follower(kafka, "soundtrack.requests.v1"), Follower(kafka, "soundtrack.segments.v1")
    requests.start()
    segments.start()
    sim = {u: ListenerState(ids[u]) for u in users}
    sent: list[tuple[int, dict[str, Any]]] = []
    session = f"s-{uuid.uuid4().hex[:6]}"
    started = time.time()
    change_ms = 0
    while time.time() - started < rest_s + run_s:
        now = int(time.time() * 1000)
        running = time.time() - started >= rest_s
        if running and not change_ms:
            change_ms = now
        sample = {"session_id": session, "event_time": now, "heart_rate_bpm": 160 if running else 70,
                  "cadence_spm": 170 if running else None, "activity": "RUNNING" if running else "RESTING",
                  "session_mode": "MATCH", "guide_target": "NONE"}
        for u in users:  # each listener's device posts its own sample with its own token
            post(f"{pipeline.ingest_url}/v1/telemetry", pipeline.token(u), {"events": [
                {**{k: v for k, v in sample.items() if k not in ("session_mode", "guide_target")},
                 "event_id": str(uuid.uuid4())}]})
        sent.append((now, sample))
        time.sleep(max(0.0, 1.0 - (time.time() - started) % 1.0))
    time.sleep(5)
    requests.stop.set()
    segments.stop.set()

    # The design: replay the pure policy on the same samples at the same times, every 10 ms.
    designed: dict[str, int] = {}
    rest_tempo: dict[str, float] = {}
    for u in users:
        state, samples = sim[u], list(sent)
        t = samples[0][0]
        end = samples[-1][0]
        while t <= end and u not in designed:
            while samples and samples[0][0] <= t:
                state = observe(state, samples.pop(0)[1], t)
            state, due = due_requests(state, t)
            for r in due:
                if t < change_ms:
                    rest_tempo[u] = r["params"]["tempo_bpm"]
                elif r["params"]["tempo_bpm"] > rest_tempo.get(u, 0) * 1.02 and u not in designed:
                    designed[u] = t
            t += 10
    first_request: dict[str, tuple[int, int]] = {}  # listener -> (Kafka timestamp, sequence)
    for _, kafka_ts, value in requests.records:
        listener = by_id.get(value["listener_id"])
        if listener in designed and listener not in first_request and kafka_ts >= change_ms \
                and value["params"]["tempo_bpm"] > rest_tempo[listener] * 1.02:
            first_request[listener] = (kafka_ts, value["sequence"])
    first_ready: dict[str, int] = {}
    for arrived, _, value in segments.records:  # the segment answering that request (or a later one)
        listener = by_id.get(value["listener_id"])
        if listener in first_request and listener not in first_ready \
                and value["sequence"] >= first_request[listener][1]:
            first_ready[listener] = arrived
    request_delays = [first_request[u][0] - designed[u] for u in first_request]
    ready_delays = [first_ready[u] - designed[u] for u in first_ready]
    design_delays = [designed[u] - change_ms for u in designed]
    return {"listeners": listeners, "with_request": len(first_request), "with_segment": len(first_ready),
            "designed_delay_ms_median": statistics.median(design_delays) if design_delays else None,
            "request_delay_p50_ms": statistics.median(request_delays) if request_delays else None,
            "request_delay_p99_ms": p99(request_delays),
            "segment_ready_p50_ms": statistics.median(ready_delays) if ready_delays else None,
            "segment_ready_p99_ms": p99(ready_delays)}


def metric(url: str, prefix: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(prefix):
                return float(line.split()[-1])
    return 0.0


def underruns(pipeline: Pipeline) -> tuple[float, float]:
    """Segments that reached a playlist after their deadline, and requests inference dropped as
    already too late (a gap the player cannot fill)."""
    late = metric(f"{pipeline.delivery_url}/metrics", 'entrain_soundtrack_buffer_underruns_total{source="server"}')
    missed = metric(f"http://127.0.0.1:{pipeline.ports['inference']}/metrics",
                    "entrain_inference_deadline_misses_total")
    return late, missed


def throughput(pipeline: Pipeline, events: int) -> dict[str, Any]:
    kafka = pipeline.kafka
    for name in ("inference", "watermark"):
        pipeline.procs[name].terminate()
    serde = TopicSerde.for_topic("listener.telemetry.v1", kafka)
    consumer = Consumer({**kafka.client_config(), "group.id": f"{kafka.topic_prefix}soundtrack"})
    parts = [TopicPartition(serde.topic, p) for p in range(serde.contract.partitions)]

    def committed_total() -> int:
        return sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10))

    before = committed_total()
    producer = Producer(kafka, "bench")
    now = int(time.time() * 1000)
    started = time.perf_counter()
    for i in range(events):
        listener = f"{i % 2000:064x}"
        producer.produce(serde, {"listener_id": listener}, {
            "event_id": str(uuid.uuid4()), "listener_id": listener, "session_id": "burst", "event_time": now + i,
            "received_time": now + i, "heart_rate_bpm": 150, "cadence_spm": 170, "activity": "RUNNING",
            "session_mode": "MATCH", "guide_target": "NONE", "device": None})
    producer.flush(60)
    produced_s = time.perf_counter() - started
    while committed_total() < before + events:
        if time.perf_counter() - started > 600:
            raise RuntimeError("the worker did not catch up within 10 minutes")
        time.sleep(0.25)
    worker_s = time.perf_counter() - started
    consumer.close()

    raw = Consumer({**kafka.client_config(), "group.id": f"raw-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
                    "enable.auto.commit": False})
    raw.assign([TopicPartition(serde.topic, p, 0) for p in range(serde.contract.partitions)])
    seen, started = 0, time.perf_counter()
    total_on_topic = before + events
    while seen < total_on_topic:
        for msg in raw.consume(1000, 1.0):
            if msg.error() is None:
                serde.decode_key(msg.key())
                serde.decode_value(msg.value())
                seen += 1
    raw_s = time.perf_counter() - started
    raw.close()
    return {"events": events, "produce_s": round(produced_s, 2), "telemetry_events_s": round(events / worker_s),
            "raw_decode_events_s": round(total_on_topic / raw_s),
            "worker_vs_raw_decode": round((events / worker_s) / (total_on_topic / raw_s), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listeners", type=int, default=20)
    parser.add_argument("--rest-s", type=float, default=20)
    parser.add_argument("--run-s", type=float, default=40)
    parser.add_argument("--events", type=int, default=60_000)
    args = parser.parse_args()
    kafka = replace(KafkaSettings.from_env(), topic_prefix=f"bench-adapt-{uuid.uuid4().hex[:6]}.")
    ensure_topics(kafka)
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = Pipeline(kafka, Path(tmp)).start()
        try:
            late_before, missed_before = underruns(pipeline)
            step = step_change(pipeline, args.listeners, args.rest_s, args.run_s)
            late, missed = underruns(pipeline)
            step["late_segments"], step["dropped_requests"] = int(late - late_before), int(missed - missed_before)
            step["underruns"] = step["late_segments"] + step["dropped_requests"]
            print(f"step change, {args.listeners} listeners: {json.dumps(step)}")
            rate = throughput(pipeline, args.events)
            print(f"one soundtrack worker: {json.dumps(rate)}")
        finally:
            pipeline.stop()
            delete_prefixed_topics(kafka)
    result = {"hold_ms_by_design": HOLD_MS, **step, **rate}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
