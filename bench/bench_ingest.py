"""Ingest throughput and latency over HTTP, against the raw producer, in one run.

1. raw      confluent_kafka.Producer sends the Avro telemetry payloads ingest would
            produce (pseudonymised, encoded beforehand): the broker-side ceiling.
2. ingest   `python -m ingest` with ENTRAIN_INGEST_WORKERS worker processes (default 2)
            on its own topic prefix; a load generator in a separate process posts what
            devices post: one listener's batch of 10 samples (10 s of 1 Hz telemetry,
            unique ids) with that listener's token, 2,000 listeners, over keep-alive
            connections from CONCURRENCY threads, as fast as the answers come: ingest_events_s.
3. latency  the same generator, open loop at 50% of the measured maximum request
            rate: p50/p99 of request latency (a 202 means the broker acknowledged).
4. profile  where a worker's time goes: each step of the request path timed in this
            process over the same events (microseconds per event).
Last line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace

from bench_kafka import raw_produce  # the same raw baseline as bench-kafka
from confluent_kafka import Producer as RawProducer
from joserfc.jwk import KeySet

from ingest.validation import TimeWindow, parse_telemetry
from kit.auth import Pseudonymizer, hash_key
from kit.producer import DEFAULT_CONFIG
from kit.serde import TopicSerde
from kit.settings import REPO_ROOT, STATE_DIR, KafkaSettings
from kit.tokens import TokenIssuer, generate_key_set
from kit.topics import delete_prefixed_topics, ensure_topics

BATCH = 10  # a device uploads about every 10 s: 10 samples of 1 Hz telemetry
USERS = 2000
TOPIC = "listener.telemetry.v1"
Body = tuple[str, bytes]  # (the listener's token, the request body)


def make_bodies(n_batches: int, tokens: list[str]) -> list[Body]:
    now = int(time.time() * 1000)
    bodies = []
    for b in range(n_batches):
        user = b % len(tokens)
        events = [{"event_id": str(uuid.uuid4()), "session_id": f"s-{user}", "event_time": now - 10_000 + i * 1000,
                   "heart_rate_bpm": 60 + (b + i) % 120, "cadence_spm": 150 + (b + i) % 40, "activity": "RUNNING",
                   "device": "bench-watch"} for i in range(BATCH)]
        bodies.append((tokens[user], json.dumps({"events": events}).encode()))
    return bodies


def raw_events_per_s(kafka: KafkaSettings, bodies: list[Body], secret: bytes) -> float:
    """The raw producer sending exactly the records ingest would produce for these bodies."""
    serde = TopicSerde.for_topic(TOPIC, kafka)
    pseudonymizer = Pseudonymizer(secret)
    window = TimeWindow(600_000, 259_200_000)
    now = int(time.time() * 1000)
    records = []
    for token, body in bodies:
        listener = pseudonymizer.listener_id(token)  # stands in for the token's listener: same cost, same size
        for item in json.loads(body)["events"]:
            event = parse_telemetry(item, now, window)
            records.append((serde.encode_key({"listener_id": listener}),
                            serde.encode_value(event.record(listener, now, pseudonymizer.listener_id("d")[:16]))))
    return raw_produce(kafka, serde.topic, records)


def profile(bodies: list[Body], kafka: KafkaSettings, secret: bytes, issuer: TokenIssuer) -> dict[str, float]:
    """Microseconds per event for each step ingest performs, measured one step at a time."""
    import orjson

    from ingest.limits import DedupWindow

    serde, pseudonymizer = TopicSerde.for_topic(TOPIC, kafka), Pseudonymizer(secret)
    window, dedup, now = TimeWindow(600_000, 259_200_000), DedupWindow(600_000), int(time.time() * 1000)
    n = len(bodies) * BATCH  # every step in microseconds per event; token checks are per request, spread over it
    steps: dict[str, float] = {}

    def step(name: str, fn):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        out = fn()
        steps[name] = round((time.perf_counter() - start) / n * 1e6, 2)
        return out

    verifier = issuer.verifier()  # once per request (a token is verified once, then remembered)
    per_body = step("verify_token", lambda: [verifier.verify(t, time.time()).listener_id for t, _ in bodies])
    listeners = [listener for listener in per_body for _ in range(BATCH)]
    items = step("json_parse", lambda: [i for _, b in bodies for i in orjson.loads(b)["events"]])
    events = step("validate", lambda: [parse_telemetry(i, now, window) for i in items])
    devices = step("pseudonymize_device", lambda: [pseudonymizer.listener_id("device\x00" + str(e.device))[:16]
                                                   for e in events])
    ids = listeners
    step("dedup", lambda: [dedup.seen(f"{i}/{e.event_id}", now) for e, i in zip(events, ids, strict=True)])
    records = step("build_record", lambda: [e.record(i, now, d) for e, i, d in zip(events, ids, devices, strict=True)])
    encoded = step("avro_encode", lambda: [(serde.encode_key({"listener_id": i}), serde.encode_value(r))
                                           for i, r in zip(ids, records, strict=True)])
    producer = RawProducer({**kafka.client_config(), **DEFAULT_CONFIG})
    producer.produce(serde.topic, value=encoded[0][1], key=encoded[0][0])
    producer.flush(30)  # connection, metadata and idempotence set-up are not per-event costs
    acked = [0]

    def on_delivery(err, msg):  # type: ignore[no-untyped-def]
        acked[0] += 1

    def produce() -> None:
        for key, value in encoded:
            producer.produce(serde.topic, value=value, key=key, on_delivery=on_delivery)
            producer.poll(0)
        producer.flush(60)

    step("produce_and_ack", produce)
    steps["total"] = round(sum(steps.values()), 2)
    return steps


def _post(conn: http.client.HTTPConnection, body: bytes, token: str) -> tuple[int, float]:
    started = time.perf_counter()
    conn.request("POST", "/v1/telemetry", body=body,
                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    if response.status != 202:
        raise RuntimeError(f"ingest answered {response.status}: {payload[:200]!r}")
    return json.loads(payload)["accepted"], time.perf_counter() - started


def load(port: int, bodies: list[Body], concurrency: int, rate_rps: float | None, out: mp.Queue) -> None:
    """Runs in its own process: post every body; closed loop, or open loop at ``rate_rps``."""
    lock, latencies, accepted, next_index = threading.Lock(), [], [0], [0]
    start = time.perf_counter()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                index = next_index[0]
                next_index[0] += 1
            if index >= len(bodies):
                return
            if rate_rps:
                delay = start + index / rate_rps - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            token, body = bodies[index]
            count, latency = _post(conn, body, token)
            with lock:
                accepted[0] += count
                latencies.append(latency)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((accepted[0], time.perf_counter() - start, sorted(latencies)))


def run_load(port: int, bodies: list[Body], concurrency: int, rate_rps: float | None = None):
    queue: mp.Queue = mp.Queue()
    proc = mp.Process(target=load, args=(port, bodies, concurrency, rate_rps, queue))
    proc.start()
    result = queue.get(timeout=600)
    proc.join()
    return result


def percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=10_000, help=f"batches of {BATCH} events for the throughput run")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("ENTRAIN_INGEST_WORKERS", "2")))
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    kafka = replace(KafkaSettings.from_env(), topic_prefix=f"bench-ingest-{uuid.uuid4().hex[:6]}.")
    ensure_topics(kafka)
    secret, key = secrets.token_bytes(32), "ek_bench_" + secrets.token_hex(16)
    folder = STATE_DIR / "bench-ingest"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "keys.json").write_text(
        json.dumps([{"key_id": "bench", "sha256": hash_key(key), "scopes": ["listener-app"]}]))
    signing, _ = generate_key_set("lt-bench")
    issuer = TokenIssuer(KeySet.import_key_set(signing))
    pseudonymizer = Pseudonymizer(secret)
    tokens = [issuer.issue(pseudonymizer.listener_id(f"user-{n}@example.com"), "PREMIUM", "DE", "bench",
                           time.time())[0] for n in range(USERS)]

    print(f"generating {args.batches + args.batches // 2} batches of {BATCH} events...", flush=True)
    bodies = make_bodies(args.batches + args.batches // 2, tokens)
    throughput_bodies, latency_bodies = bodies[: args.batches], bodies[args.batches:]

    raw = raw_events_per_s(kafka, throughput_bodies, secret)
    print(f"raw producer: {raw:,.0f} events/s", flush=True)

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "services"), "ENTRAIN_TOPIC_PREFIX": kafka.topic_prefix,
           "ENTRAIN_INGEST_PORT": str(port), "ENTRAIN_INGEST_WORKERS": str(args.workers),
           "ENTRAIN_API_KEYS_FILE": str(folder / "keys.json"), "ENTRAIN_PSEUDONYM_SECRET": secret.hex(),
           "ENTRAIN_TOKEN_SIGNING_KEYS": json.dumps(signing),
           "ENTRAIN_INGEST_RATE_PER_KEY": "10000000", "ENTRAIN_INGEST_BURST_PER_KEY": "10000000",
           "ENTRAIN_LOG_LEVEL": "WARNING"}
    with open(folder / "ingest.log", "wb") as server_log:
        server = subprocess.Popen([sys.executable, "-m", "ingest"], env=env, start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=server_log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"ingest did not become ready; see {folder / 'ingest.log'}")
            time.sleep(0.3)
        run_load(port, make_bodies(200, tokens), args.concurrency)  # warm-up: connections, caches
        accepted, elapsed, latencies = run_load(port, throughput_bodies, args.concurrency)
        assert accepted == len(throughput_bodies) * BATCH, f"accepted {accepted}"
        ingest_eps = accepted / elapsed
        max_rps = len(throughput_bodies) / elapsed
        print(f"ingest ({args.workers} workers, {args.concurrency} connections): {ingest_eps:,.0f} events/s, "
              f"{max_rps:.1f} requests/s, p50 {percentile(latencies, 0.5) * 1000:.1f} ms at saturation", flush=True)
        _, _, half_latencies = run_load(port, latency_bodies, args.concurrency, rate_rps=max_rps / 2)
        p50, p99 = percentile(half_latencies, 0.5) * 1000, percentile(half_latencies, 0.99) * 1000
        print(f"at {max_rps / 2:.1f} requests/s (50% of max): p50 {p50:.1f} ms, p99 {p99:.1f} ms", flush=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    steps = profile(latency_bodies[:2000], kafka, secret, issuer)
    delete_prefixed_topics(kafka)
    print("profile, us per event in one process: " + ", ".join(f"{k} {v}" for k, v in steps.items()), flush=True)
    print("RESULT " + json.dumps({
        "batch_size": BATCH, "workers": args.workers,
        "ingest_events_s": round(ingest_eps), "raw_produce_events_s": round(raw),
        "ingest_vs_raw_ratio": round(ingest_eps / raw, 3), "p50_ms": round(p50, 1), "p99_ms": round(p99, 1),
        "latency_at_requests_s": round(max_rps / 2, 1), "profile_us_per_event": steps,
    }))


if __name__ == "__main__":
    main()
