"""GET /v1/me/export on the real broker: a listener's records from every topic that carries
them (found in the partition the producers' partitioners chose), their soundtrack state from
the changelog, nobody else's data, and a rate limit."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer as RawProducer
from confluent_kafka.admin import AdminClient, NewTopic
from starlette.testclient import TestClient
from tests.auth_helpers import VERIFIER, bearer, token_for
from tests.royalty_fixtures import play_record, segment_record

from delivery.app import SegmentFeed, create_app
from delivery.export import Exporter, crc32_partition, murmur2_partition
from delivery.playlists import Playlists
from kit.auth import Pseudonymizer
from kit.producer import Producer
from kit.serde import TopicSerde
from kit.settings import KafkaSettings
from kit.store import FileStore

PSEUDO = Pseudonymizer(b"e" * 32)


def test_the_partitioners_match_librdkafka_s_and_java_s(isolated: KafkaSettings) -> None:
    """The export reads one partition per topic: the one the producer's partitioner chose."""
    topic = isolated.topic("listener.telemetry.v1")
    seen: dict[bytes, dict[str, int]] = {}

    def delivered(name: str):  # type: ignore[no-untyped-def]
        return lambda err, msg: seen.setdefault(msg.key(), {}).__setitem__(name, msg.partition())

    for name, partitioner in (("default", None), ("murmur2", "murmur2")):
        producer = RawProducer({**isolated.client_config(), **({"partitioner": partitioner} if partitioner else {})})
        for n in range(60):
            producer.produce(topic, key=f"listener-{n}-{uuid.uuid4().hex}".encode() if name == "default"
                             else list(seen)[n], value=b"x", on_delivery=delivered(name))
        assert producer.flush(30) == 0
    partitions = TopicSerde.for_topic("listener.telemetry.v1", isolated).contract.partitions
    assert len(seen) == 60
    for key, chosen in seen.items():
        assert chosen == {"default": crc32_partition(key, partitions), "murmur2": murmur2_partition(key, partitions)}


def test_an_export_holds_the_listener_s_records_and_no_one_else_s(isolated: KafkaSettings, tmp_path: Path) -> None:
    alice, bob = PSEUDO.listener_id("alice"), PSEUDO.listener_id("bob")
    producer = Producer(isolated, "test")
    now = int(time.time() * 1000)
    telemetry = TopicSerde.for_topic("listener.telemetry.v1", isolated)
    plays = TopicSerde.for_topic("listener.plays.v1", isolated)
    segments = TopicSerde.for_topic("soundtrack.segments.v1", isolated)
    for listener, n in ((alice, 3), (bob, 2)):
        for i in range(n):
            producer.produce(telemetry, {"listener_id": listener}, {
                "event_id": str(uuid.uuid4()), "listener_id": listener, "session_id": "s-1", "device": None,
                "event_time": now - i, "received_time": now, "heart_rate_bpm": 120 + i, "cadence_spm": None,
                "activity": "RUNNING", "session_mode": "MATCH", "guide_target": "NONE", "music": True})
        producer.produce(plays, {"listener_id": listener},
                         play_record(str(uuid.uuid4()), f"seg-{listener[:6]}", now - 60_000, listener=listener))
        producer.produce(segments, {"listener_id": listener},
                         {**segment_record(f"seg-{listener[:6]}", [("wk-1", 1_000_000)], listener),
                          "generated_at": now})
    assert producer.flush(30) == 0
    # The soundtrack worker's state: Faust's changelog, JSON keys, in the listener's telemetry partition.
    changelog = isolated.topic("soundtrack-listeners-changelog")
    admin = AdminClient(isolated.client_config())
    admin.create_topics([NewTopic(changelog, telemetry.contract.partitions, 1)])[changelog].result(30)
    raw = RawProducer(isolated.client_config())
    key = telemetry.encode_key({"listener_id": alice})
    partition = crc32_partition(key, telemetry.contract.partitions)
    raw.produce(changelog, key=json.dumps(alice).encode(), value=json.dumps({"bpm": 150}).encode(),
                partition=partition)
    raw.produce(changelog, key=json.dumps(alice).encode(), value=json.dumps({"bpm": 160}).encode(),
                partition=partition)
    assert raw.flush(30) == 0

    feed = SegmentFeed(isolated, Playlists(), lookback_s=600).start()
    try:
        client = TestClient(create_app(VERIFIER, PSEUDO, feed, FileStore(tmp_path),
                                       exporter=Exporter(isolated, changelog)))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not feed.playlists.entries(alice):
            time.sleep(0.2)
        alice_auth = bearer(token_for(PSEUDO, "alice"))
        response = client.get("/v1/me/export", headers=alice_auth)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["listener_id"] == alice and body["token"]["territory"] == "DE"
        topics = body["topics"]
        assert len(topics["listener.telemetry.v1"]["records"]) == 3
        assert [r["play_id"] for r in topics["listener.plays.v1"]["records"]] and \
            len(topics["listener.plays.v1"]["records"]) == 1
        assert [r["segment_id"] for r in topics["soundtrack.segments.v1"]["records"]] == [f"seg-{alice[:6]}"]
        assert topics["listener.telemetry.v1"]["retention_ms"] == 3 * 86_400_000
        assert body["soundtrack_state"] == {"bpm": 160}  # the latest changelog record
        assert body["delivery_playlist"]["segment_ids"] == [f"seg-{alice[:6]}"]
        assert bob not in json.dumps(body)  # nobody else's records
        assert "royalty.events.v1, royalty.play-ledger.v1" in body["not_held"]

        assert client.get("/v1/me/export", headers=alice_auth).status_code == 200  # the burst of two
        limited = client.get("/v1/me/export", headers=alice_auth)
        assert limited.status_code == 429 and "export a minute" in limited.json()["error"]
        assert client.get("/v1/me/export").status_code == 401
        assert client.get("/v1/me/export?user_id=bob", headers=bearer(token_for(PSEUDO, "carol"))).status_code == 403
        carol = client.get("/v1/me/export", headers=bearer(token_for(PSEUDO, "carol"))).json()
        assert all(not t["records"] for t in carol["topics"].values()) and carol["soundtrack_state"] is None
    finally:
        feed.stop()


def test_an_export_the_broker_cannot_serve_in_time_is_a_503_with_a_reason(isolated: KafkaSettings,
                                                                           tmp_path: Path) -> None:
    class Stalled(Exporter):
        def export(self, listener_id: str) -> dict:  # type: ignore[type-arg]
            raise TimeoutError("listener.telemetry.v1 [3] not read to its end within 60s")

    feed = SegmentFeed(isolated, Playlists(), lookback_s=1).start()
    try:
        client = TestClient(create_app(VERIFIER, PSEUDO, feed, FileStore(tmp_path),
                                       exporter=Stalled(isolated, "no-changelog")))
        answer = client.get("/v1/me/export", headers=bearer(token_for(PSEUDO, "alice")))
        assert answer.status_code == 503 and "retry in a minute" in answer.json()["error"]
    finally:
        feed.stop()
