"""Ingest's HTTP API against the real broker: app backends mint listener tokens, listeners send
with them; what is accepted reaches the topics, decodes, and carries no raw user id; everything
bad is refused with a reason."""

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
from tests.auth_helpers import ISSUER, bearer, token_for
from tests.kafka_helpers import read_all

from ingest.app import OPENAPI_PATH, create_app
from ingest.settings import IngestSettings
from ingest.validation import TimeWindow
from kit.auth import KeyStore, Pseudonymizer, hash_key, listener_play_id
from kit.serde import TopicSerde
from kit.settings import KafkaSettings

APP_KEY, RH_KEY, ADMIN_KEY = "ek_test_app", "ek_test_rh", "ek_test_admin"
SECRET = b"s" * 32
KEYS = KeyStore.from_json(json.dumps([
    {"key_id": "app", "sha256": hash_key(APP_KEY), "scopes": ["listener-app"]},
    {"key_id": "rh7", "sha256": hash_key(RH_KEY), "scopes": ["rights-holder"], "rights_holder_id": "rh-demo-0007"},
    {"key_id": "ops", "sha256": hash_key(ADMIN_KEY), "scopes": ["admin"]},
]))
SETTINGS = IngestSettings(keys=KEYS, pseudonymizer=Pseudonymizer(SECRET), tokens=ISSUER, max_batch=1000,
                          telemetry_window=TimeWindow(120_000, 259_200_000),
                          plays_window=TimeWindow(120_000, 2_592_000_000))
APP = {"Authorization": f"Bearer {APP_KEY}"}


def listener(user: str = "alice@example.com", tier: str = "PREMIUM", territory: str = "DE") -> dict[str, str]:
    return bearer(token_for(Pseudonymizer(SECRET), user, tier, territory))


ALICE = listener()


def alices(play_id: str) -> str:
    """The id alice's play has on listener.plays.v1."""
    return listener_play_id(Pseudonymizer(SECRET).listener_id("alice@example.com"), play_id)


def now_ms() -> int:
    return int(time.time() * 1000)


def sample(**changes: Any) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "session_id": "s-1", "event_time": now_ms() - 500,
            "heart_rate_bpm": 150, "cadence_spm": 168, "activity": "RUNNING", **changes}


def play(**changes: Any) -> dict[str, Any]:
    return {"play_id": str(uuid.uuid4()), "content_kind": "AI_SEGMENT",
            "segment_id": "seg-0001", "started_at": now_ms() - 40_000, "ms_played": 35_000, "completed": True,
            **changes}


@pytest.fixture
def client(isolated: KafkaSettings) -> Iterator[TestClient]:
    with TestClient(create_app(SETTINGS, isolated), raise_server_exceptions=False) as c:
        c.kafka = isolated  # type: ignore[attr-defined]
        yield c


def decoded(kafka: KafkaSettings, topic: str, expected: int) -> list[tuple[bytes, dict, dict]]:
    serde = TopicSerde.for_topic(topic, kafka)
    return [(m.key() + (m.value() or b""), serde.decode_key(m.key()), serde.decode_value(m.value()))
            for m in read_all(kafka, serde.topic, expected)]


def test_accepted_telemetry_decodes_from_the_topic_keyed_by_the_tokens_pseudonym(client: TestClient) -> None:
    events = [(ALICE, "alice@example.com", sample(device="Alice's iPhone 15")),
              (listener("bob-42"), "bob-42", sample(user_id="bob-42", heart_rate_bpm=None, cadence_spm=None,
                                                    activity="RESTING"))]
    for headers, _, event in events:
        response = client.post("/v1/telemetry", json={"events": [event]}, headers=headers)
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    records = decoded(client.kafka, "listener.telemetry.v1", 2)  # type: ignore[attr-defined]
    by_event = {value["event_id"]: (raw, key, value) for raw, key, value in records}
    for _, user, event in events:
        raw, key, value = by_event[event["event_id"]]
        pseudonym = Pseudonymizer(SECRET).listener_id(user)
        assert key == {"listener_id": pseudonym} and value["listener_id"] == pseudonym
        assert value["heart_rate_bpm"] == event["heart_rate_bpm"]
        assert value["event_time"] == event["event_time"]
        assert user.encode() not in raw and b"iPhone" not in raw  # free text is pseudonymised too
    assert len(by_event[events[0][2]["event_id"]][2]["device"]) == 16


def test_tokens_are_minted_for_app_backends_only(client: TestClient) -> None:
    wanted = {"user_id": "carol", "subscription_tier": "FREE", "territory": "FR"}
    minted = client.post("/v1/tokens", headers=APP, json=wanted)
    assert minted.status_code == 201, minted.text
    body = minted.json()
    assert body["expires_at"] - time.time() == pytest.approx(SETTINGS.tokens.ttl_s, abs=5)
    carol = bearer(body["token"])
    assert client.post("/v1/telemetry", headers=carol, json={"events": [sample()]}).status_code == 202
    assert client.post("/v1/plays", headers=carol, json={"plays": [play()]}).status_code == 202
    value = next(v for _, _, v in decoded(client.kafka, "listener.plays.v1", 1))  # type: ignore[attr-defined]
    assert (value["subscription_tier"], value["territory"]) == ("FREE", "FR")  # from the token, not the client
    assert value["listener_id"] == Pseudonymizer(SECRET).listener_id("carol")
    for key in (RH_KEY, ADMIN_KEY):  # only a listener-app key mints
        assert client.post("/v1/tokens", headers={"Authorization": f"Bearer {key}"}, json=wanted).status_code == 403
    assert client.post("/v1/tokens", json=wanted).status_code == 401
    refused = client.post("/v1/tokens", headers=APP, json={**wanted, "territory": "France"})
    assert refused.status_code == 422 and refused.json()["field"] == "territory"
    assert client.post("/v1/tokens", headers=carol, json=wanted).status_code == 401  # a token cannot mint
    jwks = client.get("/.well-known/jwks.json").json()
    assert [k["kid"] for k in jwks["keys"]] == ["lt-test-1"] and all("d" not in k for k in jwks["keys"])


def test_listener_endpoints_take_the_listener_from_the_token_only(client: TestClient) -> None:
    for path, field_name, item in (("/v1/telemetry", "events", sample()), ("/v1/plays", "plays", play())):
        app_only = client.post(path, headers=APP, json={field_name: [item]})
        assert app_only.status_code == 403 and "POST /v1/tokens" in app_only.json()["error"]
        other = client.post(path, headers=ALICE, json={field_name: [{**item, "user_id": "mallory"}]})
        assert other.status_code == 403 and "another listener" in other.json()["error"]
        same = client.post(path, headers=ALICE, json={field_name: [{**item, "user_id": "alice@example.com"}]})
        assert same.status_code == 202, same.text
    cheaper = play(subscription_tier="FREE", territory="IN")  # what a client says here changes nothing
    assert client.post("/v1/plays", headers=ALICE, json={"plays": [cheaper]}).status_code == 202
    value = next(v for _, _, v in decoded(client.kafka, "listener.plays.v1", 3)  # type: ignore[attr-defined]
                 if v["play_id"] == alices(cheaper["play_id"]))
    assert (value["subscription_tier"], value["territory"]) == ("PREMIUM", "DE")


@pytest.mark.parametrize(("make_token", "reason"), [
    (lambda: token_for(Pseudonymizer(SECRET), "alice", now_s=time.time() - 7200), "expired"),
    (lambda: token_for(Pseudonymizer(SECRET), "alice")[:-4] + "AAAA", "signature"),
    (lambda: "eyJhbGciOiJub25lIiwia2lkIjoibHQtdGVzdC0xIn0." + token_for(Pseudonymizer(SECRET), "a").split(".")[1] + ".",
     "algorithm"),
    (lambda: forged(kid="lt-unknown"), "unknown key id"),
    (lambda: forged(aud="someone-else"), "aud"),
    (lambda: "not-a-jwt", "not a listener token"),
])
def test_bad_tokens_are_401_with_a_reason(client: TestClient, make_token: Any, reason: str) -> None:
    answer = client.post("/v1/telemetry", headers=bearer(make_token()), json={"events": [sample()]})
    assert answer.status_code == 401 and reason in answer.json()["error"], answer.text


def forged(kid: str = "lt-test-1", aud: str = "entrain-listener") -> str:
    """A token with one thing wrong, signed with the real key (a wrong kid is then unknown)."""
    from joserfc import jwt
    from joserfc.jwk import OKPKey
    from tests.auth_helpers import PRIVATE_SET

    from kit.tokens import ISSUER as ISS
    key = OKPKey.import_key(PRIVATE_SET["keys"][0])
    claims = {"iss": ISS, "aud": aud, "sub": "x" * 64, "tier": "FREE", "territory": "DE", "app": "app",
              "iat": int(time.time()), "exp": int(time.time()) + 600}
    return jwt.encode({"alg": "Ed25519", "kid": kid}, claims, key, algorithms=["Ed25519"])


def test_a_batch_is_accepted_partially_with_reasons_per_index(client: TestClient) -> None:
    good = sample()
    response = client.post("/v1/telemetry", headers=ALICE, json={"events": [
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
    response = client.post("/v1/telemetry", headers=ALICE, json={"events": [sample(cadence_spm=999)]})
    assert response.status_code == 422
    assert response.json()["rejected"] == [{"index": 0, "field": "cadence_spm", "reason": "999 is outside 0-260"}]
    kafka = client.kafka  # type: ignore[attr-defined]
    assert read_all(kafka, kafka.topic("listener.telemetry.v1"), 1, timeout_s=3) == []


def test_duplicate_event_ids_are_accepted_once(client: TestClient) -> None:
    event = sample()
    first = client.post("/v1/telemetry", headers=ALICE, json={"events": [event, event]}).json()
    again = client.post("/v1/telemetry", headers=ALICE, json={"events": [event]}).json()
    assert (first["accepted"], first["duplicates"]) == (1, 1)
    assert (again["accepted"], again["duplicates"]) == (0, 1)
    kafka = client.kafka  # type: ignore[attr-defined]
    assert len(read_all(kafka, kafka.topic("listener.telemetry.v1"), 2, timeout_s=4)) == 1


def test_plays_are_produced_and_impossible_durations_flagged(client: TestClient) -> None:
    normal, odd = play(), play(started_at=now_ms() - 1_000, ms_played=600_000)
    response = client.post("/v1/plays", headers=ALICE, json={"plays": [normal, odd]})
    assert response.status_code == 202 and response.json()["accepted"] == 2
    values = {v["play_id"]: v for _, _, v in decoded(client.kafka, "listener.plays.v1", 2)}  # type: ignore[attr-defined]
    assert values[alices(normal["play_id"])]["fraud_flags"] == []
    assert values[alices(odd["play_id"])]["fraud_flags"] == ["played_longer_than_elapsed"]


def test_consent_is_produced_to_the_compacted_topic(client: TestClient) -> None:
    body = {"ai_training": True, "ai_generation": False, "likeness": False}
    response = client.put("/v1/rights-holders/rh-demo-0007/consent", json=body,
                          headers={"Authorization": f"Bearer {RH_KEY}"})
    assert response.status_code == 202, response.text
    [(_, key, value)] = decoded(client.kafka, "catalog.consent.v1", 1)  # type: ignore[attr-defined]
    assert key == {"rights_holder_id": "rh-demo-0007", "work_id": None}
    assert value["ai_generation"] is False and value["change_id"] == response.json()["change_id"]


def test_an_erasure_request_is_produced_under_the_pseudonym_only(client: TestClient) -> None:
    response = client.post("/v1/erasures", headers=ALICE)  # the token says whose data
    assert response.status_code == 202, response.text
    [(raw, key, value)] = decoded(client.kafka, "listener.erasures.v1", 1)  # type: ignore[attr-defined]
    assert key == {"listener_id": Pseudonymizer(SECRET).listener_id("alice@example.com")}
    assert value["erasure_id"] == response.json()["erasure_id"] and b"alice" not in raw
    assert client.post("/v1/erasures", json={"user_id": "alice@example.com"}, headers=ALICE).status_code == 202
    assert client.post("/v1/erasures", json={"user_id": "has space"}, headers=ALICE).status_code == 400
    assert client.post("/v1/erasures", json={"user_id": "bob"}, headers=ALICE).status_code == 403
    for key in (APP_KEY, RH_KEY):  # no API key erases anyone
        assert client.post("/v1/erasures", json={"user_id": "alice@example.com"},
                           headers={"Authorization": f"Bearer {key}"}).status_code == 403


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "reason"), [
    ("post", "/v1/telemetry", {}, {"events": []}, 401, "missing listener token"),
    ("post", "/v1/telemetry", {"Authorization": "Bearer nope"}, {"events": []}, 401, "not a listener token"),
    ("post", "/v1/telemetry", {"Authorization": f"Bearer {RH_KEY}"}, {"events": [{}]}, 403, "cannot act for a"),
    ("post", "/v1/tokens", {"Authorization": "Bearer nope"}, {}, 401, "unknown API key"),
    ("put", "/v1/rights-holders/rh-other/consent", {"Authorization": f"Bearer {RH_KEY}"},
     {"ai_training": True, "ai_generation": True, "likeness": True}, 403,
     "may only change the consent of rh-demo-0007"),
    ("put", "/v1/rights-holders/rh-other/consent", APP, {}, 403, "lacks the rights-holder scope"),
    ("post", "/v1/telemetry", ALICE, {"event": []}, 400, 'a "events" array'),
    ("post", "/v1/telemetry", ALICE, {"events": []}, 400, "is empty"),
    ("post", "/v1/telemetry", ALICE, {"events": [{}] * 1001}, 413, "at most 1000 per request"),
    ("post", "/v1/plays", ALICE, ["plays"], 400, 'a "plays" array'),
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
    bad = client.post("/v1/telemetry", headers={**ALICE, "Content-Type": "application/json"}, content=b"{not json")
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    huge = client.post("/v1/telemetry", headers=ALICE, content=b"[" + b" " * 1_100_000 + b"]")
    assert huge.status_code == 413 and "larger than 1048576 bytes" in huge.json()["error"]
    chunks = (b" " * 65_536 for _ in range(40))  # chunked, no length declared: cut off at the limit
    chunked = client.post("/v1/telemetry", headers=ALICE, content=chunks)
    assert chunked.status_code == 413


def test_rate_limits_per_listener_and_per_app_answer_429_with_retry_after(isolated: KafkaSettings) -> None:
    tight = replace(SETTINGS, rate_per_listener=0.01, burst_per_listener=2, max_batch=2)  # no refill in the test
    with TestClient(create_app(tight, isolated)) as c:
        assert c.post("/v1/telemetry", headers=ALICE, json={"events": [sample(), sample()]}).status_code == 202
        limited = c.post("/v1/telemetry", headers=ALICE, json={"events": [sample()]})
        other = c.post("/v1/telemetry", headers=listener("bob"), json={"events": [sample()]})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert "per listener" in limited.json()["error"] and other.status_code == 202
    per_app = replace(SETTINGS, rate_per_key=0.01, burst_per_key=2, max_batch=2)
    with TestClient(create_app(per_app, isolated)) as c:
        assert c.post("/v1/telemetry", headers=ALICE, json={"events": [sample()]}).status_code == 202
        limited = c.post("/v1/telemetry", headers=listener("bob"), json={"events": [sample(), sample()]})
    assert limited.status_code == 429 and "per app" in limited.json()["error"]


def test_a_full_producer_queue_answers_429(isolated: KafkaSettings) -> None:
    with TestClient(create_app(replace(SETTINGS, max_in_flight=3), isolated)) as c:
        response = c.post("/v1/telemetry", headers=ALICE, json={"events": [sample() for _ in range(4)]})
    assert response.status_code == 429 and "Retry-After" in response.headers


def test_an_unreachable_broker_answers_503_within_the_ack_timeout() -> None:
    nowhere = KafkaSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    with TestClient(create_app(replace(SETTINGS, ack_timeout_s=1.0), nowhere)) as c:
        started = time.monotonic()
        response = c.post("/v1/telemetry", headers=ALICE, json={"events": [sample()]})
        elapsed = time.monotonic() - started
        ready = c.get("/readyz")
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert "did not acknowledge" in response.json()["error"] or "rejected" in response.json()["error"]
    assert elapsed < 10
    assert ready.status_code == 503


def test_health_metrics_and_the_served_openapi_document(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    client.post("/v1/telemetry", headers=ALICE, json={"events": [sample()]})
    metrics = client.get("/metrics").text
    assert 'entrain_ingest_requests_total{route="telemetry",status="202"}' in metrics
    assert 'entrain_ingest_events_total{kind="telemetry",outcome="accepted"}' in metrics
    served = client.get("/openapi.json").json()
    committed = yaml.safe_load(OPENAPI_PATH.read_text())
    event_time = served["components"]["schemas"]["TelemetryEvent"]["properties"]["event_time"]
    assert now_ms() - 259_200_000 < event_time["minimum"] < event_time["maximum"] <= now_ms() + 120_000
    assert served["paths"] == committed["paths"]  # the same document, with today's time windows stated


def test_the_raw_user_id_never_reaches_a_topic_or_the_logs(
        client: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    user = f"raw-user-{uuid.uuid4().hex}@example.com"
    minted = client.post("/v1/tokens", headers=APP, json={"user_id": user, "subscription_tier": "FREE",
                                                           "territory": "DE"})
    headers = bearer(minted.json()["token"])
    client.post("/v1/telemetry", headers=headers, json={"events": [sample(user_id=user),
                                                                   sample(user_id=user, heart_rate_bpm=1)]})
    client.post("/v1/plays", headers=headers, json={"plays": [play(user_id=user)]})
    kafka = client.kafka  # type: ignore[attr-defined]
    for topic in ("listener.telemetry.v1", "listener.plays.v1", "listener.telemetry.v1.dlq", "listener.plays.v1.dlq"):
        for message in read_all(kafka, kafka.topic(topic), 10, timeout_s=3):
            assert user.encode() not in (message.key() or b"") + (message.value() or b"")
    out = capsys.readouterr()
    assert user not in out.out + out.err
