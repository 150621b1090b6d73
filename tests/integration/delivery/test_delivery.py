"""Delivery on the real broker: watermarked segments become each listener's playlist (JSON and
HLS), audio behind signed URLs bound to the listener, listener tokens only, late segments counted
as underruns."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import m3u8
import pytest
from prometheus_client import REGISTRY
from starlette.testclient import TestClient
from tests.auth_helpers import VERIFIER, bearer, token_for

from delivery.app import SegmentFeed, create_app
from delivery.playlists import Playlists
from kit.auth import Pseudonymizer
from kit.producer import Producer
from kit.ratelimit import RateLimiter
from kit.serde import TopicSerde
from kit.settings import KafkaSettings
from kit.store import FileStore

APP_KEY = "app-key-for-delivery-tests-0123456789"
PSEUDO = Pseudonymizer(b"p" * 32)
ALICE, BOB = bearer(token_for(PSEUDO, "alice")), bearer(token_for(PSEUDO, "bob"))


def segment(listener: str, n: int, uri: str, sha: str, tempo: float, late: bool) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {"segment_id": f"seg-{listener[:6]}-{n}", "request_id": f"r-{n}", "listener_id": listener,
            "session_id": "s-1", "sequence": n,
            "params": {"tempo_bpm": tempo, "energy": 0.5, "mode": "MAJOR", "key_tonic": 0, "bars": 2},
            "audio": {"uri": uri, "sha256": sha, "format": "WAV", "sample_rate_hz": 44100, "channels": 2,
                      "duration_ms": 3000},
            "provenance": {"model_id": "m", "model_version": "v", "training_manifest_sha256": "0" * 64, "seed": n,
                           "influences": [{"work_id": "w-1", "weight_ppm": 1_000_000}]},
            "generated_at": now, "deadline": now - 1000 if late else now + 60_000, "source_sha256": "1" * 64,
            "watermark": {"key_id": "wk", "payload_hex": "00000001", "verification_score": 2.0,
                          "verified_at": now},
            "previous_segment_id": f"seg-{listener[:6]}-{n - 1}" if n else None,
            "rendition": {"format": "AAC_LC_FMP4", "uri": uri, "sha256": sha, "init_uri": uri, "init_sha256": sha,
                          "bitrate_bps": 128_000, "sample_rate_hz": 44_100, "decode_time": n * 129 * 1024,
                          "frames": 129, "discontinuity": n == 0}}


def underruns(source: str) -> float:
    return REGISTRY.get_sample_value("entrain_soundtrack_buffer_underruns_total", {"source": source}) or 0.0


def test_playlists_audio_auth_and_underruns(isolated: KafkaSettings, tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    uri, sha = store.put(b"RIFF-not-really-a-wav", "wav")
    store.put(b"RIFF-not-really-a-wav", "m4s"), store.put(b"RIFF-not-really-a-wav", "mp4")  # its "rendition"
    alice, bob = PSEUDO.listener_id("alice"), PSEUDO.listener_id("bob")
    serde = TopicSerde.for_topic("soundtrack.segments.v1", isolated)
    producer = Producer(isolated, "test")
    records = [segment(alice, 1, uri, sha, 92.7, late=False), segment(alice, 0, uri, sha, 90.0, late=True),
               segment(bob, 0, uri, sha, 120.0, late=False)]
    for record in records:
        producer.produce(serde, {"listener_id": record["listener_id"]}, record)
    producer.produce_raw(serde.topic, serde.encode_key({"listener_id": alice}), b"garbage")  # skipped, logged
    assert producer.flush(30) == 0
    server_before = underruns("server")

    feed = SegmentFeed(isolated, Playlists(), lookback_s=600).start()
    try:
        client = TestClient(create_app(VERIFIER, PSEUDO, feed, store))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(client.get("/v1/playlist", headers=ALICE).json()["segments"]) < 2:
            time.sleep(0.2)
        body = client.get("/v1/playlist", headers=ALICE).json()
        assert [s["sequence"] for s in body["segments"]] == [0, 1]  # in sequence order, whatever the arrival
        assert body["target_tempo_bpm"] == 92.7 and [s["late"] for s in body["segments"]] == [True, False]
        assert underruns("server") == server_before + 1
        assert client.get("/v1/playlist", headers=BOB).json()["segments"][0]["params"]["tempo_bpm"] == 120
        assert client.get("/v1/playlist?user_id=alice", headers=ALICE).status_code == 200  # its own id: fine
        assert feed.caught_up.wait(15) and client.get("/readyz").status_code == 200

        hls = client.get("/v1/playlist.m3u8", headers=ALICE)
        assert hls.status_code == 200 and hls.text.startswith("#EXTM3U")
        listed = m3u8.loads(hls.text)
        assert listed.version == 7 and listed.media_sequence == 0 and len(listed.segments) == 2
        assert [s.discontinuity for s in listed.segments] == [False, False]
        assert listed.segments[0].duration == pytest.approx(129 * 1024 / 44_100, abs=1e-5)
        fragment = client.get(listed.segments[0].uri)
        assert fragment.status_code == 200 and fragment.headers["content-type"] == "audio/mp4"
        assert client.get(listed.segments[0].init_section.uri).status_code == 200
        assert client.get(listed.segments[0].uri.replace(".m4s?", ".wav?")).status_code == 403  # extension signed

        url = body["segments"][0]["url"]
        audio = client.get(url)
        assert audio.status_code == 200 and audio.content == b"RIFF-not-really-a-wav"
        assert client.get(url.replace("sig=", "sig=0")).status_code == 403
        assert client.get(url.replace(f"l={alice}", f"l={bob}")).status_code == 403  # bound to the listener
        assert client.get(f"/v1/audio/{sha}.wav").status_code == 400
        assert client.get(url.split("&sig=")[0] + "&sig=%C2%80").status_code == 403  # found by fuzzing: was a 500
        for bad_exp in ("²", "1e9", "-1", "9" * 40):  # unicode digits and friends: a reason, never a 500
            answer = client.get(url.split("&exp=")[0] + f"&exp={bad_exp}&sig=00")
            assert answer.status_code == 400 and "exp" in answer.json()["error"], bad_exp

        client_before = underruns("client")
        assert client.post("/v1/underruns", headers=ALICE, content=b'{"segment_id":"x"}').status_code == 202
        assert underruns("client") == client_before + 1
        assert client.post("/v1/underruns", headers=ALICE, content=b"nope").status_code == 400
        assert client.post("/v1/underruns", headers=ALICE, content=b" " * 5000).status_code == 413
        chunked = client.post("/v1/underruns", headers=ALICE, content=(b" " * 1000 for _ in range(10)))
        assert chunked.status_code == 413  # a chunked body is cut off at the limit, not read whole
        assert "Entrain" in client.get("/").text
    finally:
        feed.stop()


def test_only_a_valid_token_for_the_same_listener_is_served(isolated: KafkaSettings, tmp_path: Path) -> None:
    feed = SegmentFeed(isolated, Playlists(), lookback_s=1).start()
    try:
        client = TestClient(create_app(VERIFIER, PSEUDO, feed, FileStore(tmp_path)))
        for path in ("/v1/playlist", "/v1/playlist.m3u8"):
            assert client.get(path).status_code == 401
            assert client.get(path, headers={"Authorization": f"Bearer {APP_KEY}"}).status_code == 401
            answer = client.get(f"{path}?user_id=bob", headers=ALICE)
            assert answer.status_code == 403 and "another listener" in answer.json()["error"]
        answer = client.post("/v1/underruns", headers=ALICE, content=b'{"user_id":"bob","segment_id":"x"}')
        assert answer.status_code == 403
        expired = bearer(token_for(PSEUDO, "alice", now_s=time.time() - 7200))
        answer = client.get("/v1/playlist", headers=expired)
        assert answer.status_code == 401 and "expired" in answer.json()["error"]

        strict = TestClient(create_app(VERIFIER, PSEUDO, feed, FileStore(tmp_path),
                                       limiter=RateLimiter(0.01, 2)))
        carol, dave = bearer(token_for(PSEUDO, "carol")), bearer(token_for(PSEUDO, "dave"))
        answers = [strict.get("/v1/playlist", headers=carol) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429] and "per listener" in answers[2].json()["error"]
        assert strict.get("/v1/playlist", headers=dave).status_code == 200  # per listener, not per app
    finally:
        feed.stop()


def test_an_erasure_empties_the_playlist_and_keeps_out_segments_requested_before_it(isolated: KafkaSettings,
                                                                                     tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    uri, sha = store.put(b"RIFF-not-really-a-wav", "wav")
    store.put(b"RIFF-not-really-a-wav", "m4s"), store.put(b"RIFF-not-really-a-wav", "mp4")  # its "rendition"
    alice = PSEUDO.listener_id("alice")
    segments, erasures = (TopicSerde.for_topic(t, isolated) for t in ("soundtrack.segments.v1",
                                                                      "listener.erasures.v1"))
    producer = Producer(isolated, "test")
    before = segment(alice, 0, uri, sha, 100.0, late=False)
    producer.produce(segments, {"listener_id": alice}, before)
    erased_at = int(time.time() * 1000) + 1_000
    producer.produce(erasures, {"listener_id": alice}, {"erasure_id": "e-1", "listener_id": alice,
                                                         "requested_at": erased_at})
    in_flight = {**segment(alice, 1, uri, sha, 100.0, late=False), "generated_at": erased_at - 500}
    rendered_late = {**segment(alice, 3, uri, sha, 100.0, late=False), "generated_at": erased_at + 4_000,
                     "requested_at": erased_at - 200}  # requested before the erasure, rendered after it
    after = {**segment(alice, 2, uri, sha, 100.0, late=False), "generated_at": erased_at + 5_000,
             "requested_at": erased_at + 4_000}
    for record in (in_flight, rendered_late, after):  # arrive after the erasure; only the last is theirs to keep
        producer.produce(segments, {"listener_id": alice}, record)
    assert producer.flush(30) == 0
    feed = SegmentFeed(isolated, Playlists(), lookback_s=600).start()
    try:
        client = TestClient(create_app(VERIFIER, PSEUDO, feed, store))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not feed.caught_up.is_set():
            time.sleep(0.2)
        time.sleep(1)
        assert [s["sequence"] for s in client.get("/v1/playlist", headers=ALICE).json()["segments"]] == [2]
    finally:
        feed.stop()


def test_a_session_refused_at_capacity_says_so_in_its_playlist_until_admitted(isolated: KafkaSettings,
                                                                                tmp_path: Path) -> None:
    """Inference's admission decisions reach the listener they are about, and no one else."""
    alice = PSEUDO.listener_id("alice")
    serde = TopicSerde.for_topic("soundtrack.admissions.v1", isolated)
    producer = Producer(isolated, "test")
    now = int(time.time() * 1000)

    def decide(decision: str, at: int) -> None:
        producer.produce(serde, {"listener_id": alice}, {
            "listener_id": alice, "session_id": "s-1", "decision": decision,
            "retry_after_ms": 10_000 if decision == "AT_CAPACITY" else 0, "active_sessions": 38,
            "capacity_sessions": 38, "decided_at": at})
        assert producer.flush(30) == 0

    decide("AT_CAPACITY", now)
    feed = SegmentFeed(isolated, Playlists(), lookback_s=600).start()
    try:
        client = TestClient(create_app(VERIFIER, PSEUDO, feed, FileStore(tmp_path)))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and client.get("/v1/playlist", headers=ALICE).json()["admission"] is None:
            time.sleep(0.2)
        body = client.get("/v1/playlist?session_id=s-1", headers=ALICE).json()
        assert body["segments"] == [] and body["admission"] == {
            "session_id": "s-1", "decision": "AT_CAPACITY", "retry_after_ms": 10_000, "decided_at": now}
        assert client.get("/v1/playlist?session_id=s-2", headers=ALICE).json()["admission"] is None
        assert client.get("/v1/playlist", headers=BOB).json()["admission"] is None
        decide("ADMITTED", now + 12_000)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and \
                client.get("/v1/playlist", headers=ALICE).json()["admission"]["decision"] != "ADMITTED":
            time.sleep(0.2)
        assert client.get("/v1/playlist", headers=ALICE).json()["admission"]["decision"] == "ADMITTED"

        # Refused again; then a segment of the session requested after that decision arrives: the
        # session is served (its ADMITTED can be missed, e.g. across an inference restart).
        decide("AT_CAPACITY", int(time.time() * 1000) - 5000)
        while time.monotonic() < deadline and \
                client.get("/v1/playlist", headers=ALICE).json()["admission"]["decision"] != "AT_CAPACITY":
            time.sleep(0.2)
        segments = TopicSerde.for_topic("soundtrack.segments.v1", isolated)
        uri, sha = FileStore(tmp_path).put(b"RIFF-not-really-a-wav", "wav")
        producer.produce(segments, {"listener_id": alice}, segment(alice, 0, uri, sha, 120.0, late=False))
        assert producer.flush(30) == 0
        while time.monotonic() < deadline and not client.get("/v1/playlist", headers=ALICE).json()["segments"]:
            time.sleep(0.2)
        body = client.get("/v1/playlist", headers=ALICE).json()
        assert len(body["segments"]) == 1 and body["admission"] is None
    finally:
        feed.stop()
