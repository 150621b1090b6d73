"""The Faust worker on the real broker: telemetry becomes requests; bad telemetry goes to the
DLQ; per-listener state survives a SIGKILL (recovered from the table's changelog)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from tests.kafka_helpers import read_all, scram_client

from kit.acls import acls, apply
from kit.producer import Producer
from kit.serde import TopicSerde
from kit.settings import REPO_ROOT, KafkaSettings


def start_worker(kafka: KafkaSettings, datadir: Path, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "services"), "ENTRAIN_TOPIC_PREFIX": kafka.topic_prefix,
           "ENTRAIN_SOUNDTRACK_METRICS_PORT": "0", "ENTRAIN_SOUNDTRACK_DATADIR": str(datadir), **extra}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "soundtrack"], env=env, stdout=out, stderr=out)


def send(kafka: KafkaSettings, listener: str, count: int, start_ms: int, cadence: int | None = 170) -> None:
    producer, serde = Producer(kafka, "test"), TopicSerde.for_topic("listener.telemetry.v1", kafka)
    for i in range(count):
        producer.produce(serde, {"listener_id": listener}, {
            "event_id": str(uuid.uuid4()), "listener_id": listener, "session_id": "run-1",
            "event_time": start_ms + i * 1000, "received_time": start_ms + i * 1000 + 40, "heart_rate_bpm": 150,
            "cadence_spm": cadence, "activity": "RUNNING", "session_mode": "MATCH", "guide_target": "NONE",
            "device": None})
    assert producer.flush(30) == 0


def requests(kafka: KafkaSettings, expected: int, timeout_s: float) -> list[dict[str, Any]]:
    serde = TopicSerde.for_topic("soundtrack.requests.v1", kafka)
    return [serde.decode_value(m.value()) for m in read_all(kafka, serde.topic, expected, timeout_s)]


def test_requests_flow_and_state_survives_a_kill(isolated: KafkaSettings, tmp_path: Path) -> None:
    listener = "b" * 64
    worker = start_worker(isolated, tmp_path / "a", tmp_path / "worker.log")
    try:
        send(isolated, listener, 3, int(time.time() * 1000))
        serde = TopicSerde.for_topic("listener.telemetry.v1", isolated)
        junk = Producer(isolated, "test")
        junk.produce_raw(serde.topic, serde.encode_key({"listener_id": listener}), b"junk")
        assert junk.flush(30) == 0
        before = requests(isolated, 4, timeout_s=40)
        assert len(before) >= 4, (tmp_path / "worker.log").read_text()[-2000:]
        # positions in order; a position may be asked again (replanned: the confirming sample came), under a new id
        positions = [r["sequence"] for r in before]
        assert sorted(set(positions)) == list(range(max(positions) + 1))
        assert len({r["request_id"] for r in before}) == len(before)
        assert all(r["listener_id"] == listener for r in before)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    [dead] = read_all(isolated, isolated.topic("listener.telemetry.v1.dlq"), 1)
    assert dead.value() == b"junk" and b"not in Confluent wire format" in dict(dead.headers())["dlq.reason"]

    seen = {r["request_id"]: r for r in requests(isolated, 1000, timeout_s=3)}
    high = max(r["sequence"] for r in seen.values())
    worker = start_worker(isolated, tmp_path / "b", tmp_path / "worker.log")  # fresh local dir: changelog only
    try:
        send(isolated, listener, 2, int(time.time() * 1000) + 10_000)
        deadline = time.monotonic() + 60
        after: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            # all of the topic: requests made after the last commit are made again first (same ids)
            after = [r for r in requests(isolated, 10_000, timeout_s=5) if r["request_id"] not in seen]
            if after:
                break
        assert after, (tmp_path / "worker.log").read_text()[-2000:]
        # Recovered state continues the sequence instead of starting the session over.
        assert min(r["sequence"] for r in after) > high - 2
        assert all(r["sequence"] > 0 for r in after)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)


def test_an_idle_listener_s_state_is_evicted_from_the_table(isolated: KafkaSettings, tmp_path: Path) -> None:
    from tests.kafka_helpers import read_to_end

    listener = "e" * 64
    worker = start_worker(isolated, tmp_path / "a", tmp_path / "worker.log", ENTRAIN_SOUNDTRACK_EVICT_AFTER_S="4")
    changelog = isolated.topic("soundtrack-listeners-changelog")
    keys = {listener.encode(), f'"{listener}"'.encode()}
    try:
        send(isolated, listener, 2, int(time.time() * 1000))
        assert requests(isolated, 1, timeout_s=40), (tmp_path / "worker.log").read_text()[-2000:]
        deadline, tombstones = time.monotonic() + 60, 0
        while time.monotonic() < deadline and not tombstones:
            time.sleep(1)
            tombstones = sum(1 for m in read_to_end(isolated, changelog) if m.key() in keys and m.value() is None)
        assert tombstones, (tmp_path / "worker.log").read_text()[-2000:]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)


def test_the_worker_joins_a_secured_cluster_as_its_scram_principal_under_the_generated_acls(
        isolated: KafkaSettings, tmp_path: Path) -> None:
    """SASL_SSL with SCRAM-SHA-512, trusting the local CA, as User:soundtrack with only the ACLs
    `python -m kit.acls` generates: it creates its changelog topic, consumes
    telemetry, produces requests and dead-letters bad records."""
    if not isolated.local_kafka:
        pytest.skip("the SCRAM listener and the authorizer belong to the local broker")
    apply(isolated, acls(isolated))
    scram = scram_client(isolated, "soundtrack", tls=True)
    listener = "f" * 60 + uuid.uuid4().hex[:4]
    worker = start_worker(isolated, tmp_path / "faust", tmp_path / "worker.log", **{
        "KAFKA_BOOTSTRAP_SERVERS": scram.bootstrap_servers, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_USERNAME": "soundtrack", "KAFKA_SASL_PASSWORD": str(scram.sasl_password),
        "KAFKA_SSL_CA_LOCATION": str(scram.ssl_ca_location), "ENTRAIN_ENV": "production",
        "ENTRAIN_SOUNDTRACK_APP_ID": isolated.topic("soundtrack")})
    try:
        send(isolated, listener, 6, int(time.time() * 1000))
        producer = Producer(isolated, "test")
        producer.produce_raw(isolated.topic("listener.telemetry.v1"), TopicSerde.for_topic(
            "listener.telemetry.v1", isolated).encode_key({"listener_id": listener}), b"junk")
        assert producer.flush(10) == 0
        got = [r for r in requests(isolated, 1, timeout_s=90) if r["listener_id"] == listener]
        assert got, (tmp_path / "worker.log").read_text()[-3000:]
        [dead] = read_all(isolated, isolated.topic("listener.telemetry.v1.dlq"), 1, timeout_s=30)
        assert dead.value() == b"junk"
        changelog = isolated.topic("soundtrack-listeners-changelog")
        topics = AdminClient(isolated.client_config()).list_topics(timeout=10).topics
        assert changelog in topics
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    assert "plaintext" not in (tmp_path / "worker.log").read_text().lower()
