"""Ingest's HTTP API against the real broker: what is accepted reaches the topics,
decodes, and carries no raw user id; everything bad is refused with a reason."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient
from tests.kafka_helpers import read_all

from ingest.app import OPENAPI_PATH, create_app
from ingest.security import KeyStore, Pseudonymizer, hash_key
from ingest.settings import IngestSettings
from ingest.validation import TimeWindow
from kit.serde import TopicSerde
from kit.settings import KafkaSettings

APP_KEY, RH_KEY, ADMIN_KEY = "ek_test_app", "ek_test_rh", "ek_test_admin"
SECRET = b"s" * 32
KEYS = KeyStore.from_json(json.dumps([
    {"key_id": "app", "sha256": hash_key(APP_KEY), "scopes": ["listener-app"]},
    {"key_id": "rh7", "sha256": hash_key(RH_KEY), "scopes": ["rights-holder"], "rights_holder_id": "rh-demo-0007"},
    {"key_id": "ops", "sha256": hash_key(ADMIN_KEY), "scopes": ["admin"]},
]))
SETTINGS = IngestSettings(keys=KEYS, pseudonymizer=Pseudonymizer(SECRET), max_batch=1000,
                          telemetry_window=TimeWindow(120_000, 259_200_000),
                          plays_window=TimeWindow(120_000, 2_592_000_000))
APP = {"Authorization": f"Bearer {APP_KEY}"}


def now_ms() -> int:
    return int(time.time() * 1000)


def sample(user: str = "alice@example.com", **changes: Any) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "user_id": user, "session_id": "s-1", "event_time": now_ms() - 500,
            "heart_rate_bpm": 150, "cadence_spm": 168, "activity": "RUNNING", **changes}


def play(user: str = "alice@example.com", **changes: Any) -> dict[str, Any]:
    return {"play_id": str(uuid.uuid4()), "user_id": user, "content_kind": "AI_SEGMENT",
            "segment_id": "seg-0001", "started_at": now_ms() - 40_000, "ms_played": 35_000, "completed": True,
            "territory": "DE", "subscription_tier": "PREMIUM", **changes}


@pytest.fixture
def client(isolated: KafkaSettings) -> Iterator[TestClient]:
    with TestClient(create_app(SETTINGS, isolated), raise_server_exceptions=False) as c:
        c.kafka = isolated  # type: ignore[attr-defined]
        yield c


def decoded(kafka: KafkaSettings, topic: str, expected: int) -> list[tuple[bytes, dict, dict]]:
    serde = TopicSerde.for_topic(topic, kafka)
    return [(m.key() + (m.value() or b""), serde.decode_key(m.key()), serde.decode_value(m.value()))
            for m in read_all(kafka, serde.topic, expected)]


def test_accepted_telemetry_decodes_from_the_topic_keyed_by_pseudonym(client: TestClient) -> None:
    events = [sample(), sample(user="bob-42", heart_rate_bpm=None, cadence_spm=None, activity="RESTING")]
    response = client.post("/v1/telemetry", json={"events": events}, headers=APP)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    records = decoded(client.kafka, "listener.telemetry.v1", 2)  # type: ignore[attr-defined]
    by_event = {value["event_id"]: (raw, key, value) for raw, key, value in records}
    for event in events:
        raw, key, value = by_event[event["event_id"]]
        listener = Pseudonymizer(SECRET).listener_id(event["user_id"])
        assert key == {"listener_id": listener} and value["listener_id"] == listener
        assert value["heart_rate_bpm"] == event["heart_rate_bpm"]
        assert value["event_time"] == event["event_time"]
        assert event["user_id"].encode() not in raw


def test_a_batch_is_accepted_partially_with_reasons_per_index(client: TestClient) -> None:
    good = sample()
    response = client.post("/v1/telemetry", headers=APP, json={"events": [
        sample(heart_rate_bpm=300), good, {"nonsense": True}, sample(event_time=now_ms() + 3_600_000)]})
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 1
    assert [(r["index"], r["field"]) for r in body["rejected"]] == [
        (0, "heart_rate_bpm"), (2, "event_id"), (3, "event_time")]
    assert body["rejected"][0]["reason"] == "300 is outside 25-250"
    values = [v for _, _, v in decoded(client.kafka, "listener.telemetry.v1", 1)]  # type: ignore[attr-defined]
    assert [v["event_id"] for v in values] == [good["event_id"]]


def test_all_invalid_is_422_and_nothing_is_produced(client: TestClient) -> None:
    response = client.post("/v1/telemetry", headers=APP, json={"events": [sample(cadence_spm=999)]})
    assert response.status_code == 422
    assert response.json()["rejected"] == [{"index": 0, "field": "cadence_spm", "reason": "999 is outside 0-260"}]
    kafka = client.kafka  # type: ignore[attr-defined]
    assert read_all(kafka, kafka.topic("listener.telemetry.v1"), 1, timeout_s=3) == []


def test_duplicate_event_ids_are_accepted_once(client: TestClient) -> None:
    event = sample()
    first = client.post("/v1/telemetry", headers=APP, json={"events": [event, event]}).json()
    again = client.post("/v1/telemetry", headers=APP, json={"events": [event]}).json()
    assert (first["accepted"], first["duplicates"]) == (1, 1)
    assert (again["accepted"], again["duplicates"]) == (0, 1)
    kafka = client.kafka  # type: ignore[attr-defined]
    assert len(read_all(kafka, kafka.topic("listener.telemetry.v1"), 2, timeout_s=4)) == 1


def test_plays_are_produced_and_impossible_durations_flagged(client: TestClient) -> None:
    normal, odd = play(), play(started_at=now_ms() - 1_000, ms_played=600_000)
    response = client.post("/v1/plays", headers=APP, json={"plays": [normal, odd]})
    assert response.status_code == 202 and response.json()["accepted"] == 2
    values = {v["play_id"]: v for _, _, v in decoded(client.kafka, "listener.plays.v1", 2)}  # type: ignore[attr-defined]
    assert values[normal["play_id"]]["fraud_flags"] == []
    assert values[odd["play_id"]]["fraud_flags"] == ["played_longer_than_elapsed"]


def test_consent_is_produced_to_the_compacted_topic(client: TestClient) -> None:
    body = {"ai_training": True, "ai_generation": False, "likeness": False}
    response = client.put("/v1/rights-holders/rh-demo-0007/consent", json=body,
                          headers={"Authorization": f"Bearer {RH_KEY}"})
    assert response.status_code == 202, response.text
    [(_, key, value)] = decoded(client.kafka, "catalog.consent.v1", 1)  # type: ignore[attr-defined]
    assert key == {"rights_holder_id": "rh-demo-0007", "work_id": None}
    assert value["ai_generation"] is False and value["change_id"] == response.json()["change_id"]


def test_an_erasure_request_is_produced_under_the_pseudonym_only(client: TestClient) -> None:
    response = client.post("/v1/erasures", json={"user_id": "alice@example.com"}, headers=APP)
    assert response.status_code == 202, response.text
    [(raw, key, value)] = decoded(client.kafka, "listener.erasures.v1", 1)  # type: ignore[attr-defined]
    assert key == {"listener_id": Pseudonymizer(SECRET).listener_id("alice@example.com")}
    assert value["erasure_id"] == response.json()["erasure_id"] and b"alice" not in raw
    assert client.post("/v1/erasures", json={"user_id": "has space"}, headers=APP).status_code == 422
    assert client.post("/v1/erasures", json={"user_id": "alice@example.com"},
                       headers={"Authorization": f"Bearer {RH_KEY}"}).status_code == 403


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "reason"), [
    ("post", "/v1/telemetry", {}, {"events": []}, 401, "missing API key"),
    ("post", "/v1/telemetry", {"Authorization": "Bearer nope"}, {"events": []}, 401, "unknown API key"),
    ("post", "/v1/telemetry", {"Authorization": f"Bearer {RH_KEY}"}, {"events": [{}]}, 403, "lacks the listener-app"),
    ("put", "/v1/rights-holders/rh-other/consent", {"Authorization": f"Bearer {RH_KEY}"},
     {"ai_training": True, "ai_generation": True, "likeness": True}, 403,
     "may only change the consent of rh-demo-0007"),
    ("put", "/v1/rights-holders/rh-other/consent", APP, {}, 403, "lacks the rights-holder scope"),
    ("post", "/v1/telemetry", APP, {"event": []}, 400, 'a "events" array'),
    ("post", "/v1/telemetry", APP, {"events": []}, 400, "is empty"),
    ("post", "/v1/telemetry", APP, {"events": [{}] * 1001}, 413, "at most 1000 per request"),
    ("post", "/v1/plays", APP, ["plays"], 400, 'a "plays" array'),
    ("put", "/v1/rights-holders/rh-demo-0007/consent", {"Authorization": f"Bearer {ADMIN_KEY}"},
     {"ai_training": "yes"}, 422, "must be true or false"),
    ("get", "/v1/telemetry", APP, None, 405, "method not allowed"),
    ("get", "/v2/anything", APP, None, 404, "no such endpoint"),
])
def test_bad_requests_get_a_json_reason(client: TestClient, method: str, path: str, headers: dict[str, str],
                                        body: Any, status: int, reason: str) -> None:
    response = client.request(method, path, headers=headers, json=body)
    assert response.status_code == status
    assert reason in response.json()["error"]


def test_unparseable_and_oversized_bodies(client: TestClient) -> None:
    bad = client.post("/v1/telemetry", headers={**APP, "Content-Type": "application/json"}, content=b"{not json")
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    huge = client.post("/v1/telemetry", headers=APP, content=b"[" + b" " * 1_100_000 + b"]")
    assert huge.status_code == 413 and "larger than 1048576 bytes" in huge.json()["error"]


def test_rate_limit_per_key_answers_429_with_retry_after(isolated: KafkaSettings) -> None:
    tight = replace(SETTINGS, rate_per_key=0.01, burst_per_key=2, max_batch=2)  # no refill during the test
    with TestClient(create_app(tight, isolated)) as c:
        assert c.post("/v1/telemetry", headers=APP, json={"events": [sample(), sample()]}).status_code == 202
        limited = c.post("/v1/telemetry", headers=APP, json={"events": [sample()]})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert "rate limit" in limited.json()["error"]


def test_a_full_producer_queue_answers_429(isolated: KafkaSettings) -> None:
    with TestClient(create_app(replace(SETTINGS, max_in_flight=3), isolated)) as c:
        response = c.post("/v1/telemetry", headers=APP, json={"events": [sample() for _ in range(4)]})
    assert response.status_code == 429 and "Retry-After" in response.headers


def test_an_unreachable_broker_answers_503_within_the_ack_timeout() -> None:
    nowhere = KafkaSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    with TestClient(create_app(replace(SETTINGS, ack_timeout_s=1.0), nowhere)) as c:
        started = time.monotonic()
        response = c.post("/v1/telemetry", headers=APP, json={"events": [sample()]})
        elapsed = time.monotonic() - started
        ready = c.get("/readyz")
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert "did not acknowledge" in response.json()["error"] or "rejected" in response.json()["error"]
    assert elapsed < 10
    assert ready.status_code == 503


def test_health_metrics_and_the_served_openapi_document(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    client.post("/v1/telemetry", headers=APP, json={"events": [sample()]})
    metrics = client.get("/metrics").text
    assert 'entrain_ingest_requests_total{route="telemetry",status="202"}' in metrics
    assert 'entrain_ingest_events_total{kind="telemetry",outcome="accepted"}' in metrics
    assert client.get("/openapi.json").json() == yaml.safe_load(OPENAPI_PATH.read_text())


def test_the_raw_user_id_never_reaches_a_topic_or_the_logs(
        client: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    user = f"raw-user-{uuid.uuid4().hex}@example.com"
    client.post("/v1/telemetry", headers=APP, json={"events": [sample(user=user), sample(user=user, heart_rate_bpm=1)]})
    client.post("/v1/plays", headers=APP, json={"plays": [play(user=user)]})
    kafka = client.kafka  # type: ignore[attr-defined]
    for topic in ("listener.telemetry.v1", "listener.plays.v1", "listener.telemetry.v1.dlq", "listener.plays.v1.dlq"):
        for message in read_all(kafka, kafka.topic(topic), 10, timeout_s=3):
            assert user.encode() not in (message.key() or b"") + (message.value() or b"")
    out = capsys.readouterr()
    assert user not in out.out + out.err
