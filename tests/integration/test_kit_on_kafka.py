"""The service kit against the real local broker: serde round trip, DLQ routing,
commits, graceful shutdown, topic management and the health endpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from kit.consumer import ConsumerLoop, InvalidRecord, Record
from kit.contracts import load_contracts
from kit.deadlines import soundtrack_deadline, soundtrack_position
from kit.observability import REGISTRY, HealthServer
from kit.producer import Producer
from kit.serde import TopicSerde
from kit.settings import KafkaSettings
from kit.topics import PartitionMismatch, delete_prefixed_topics, ensure_topics
from tests.kafka_helpers import committed, read_all

TELEMETRY = "listener.telemetry.v1"
REQUESTS = "soundtrack.requests.v1"


def telemetry_value(n: int, heart_rate: int = 120) -> dict[str, Any]:
    example = load_contracts()[TELEMETRY].examples()[0][1]["value"]
    return {**example, "event_id": f"evt-{n}-{uuid.uuid4().hex[:6]}", "heart_rate_bpm": heart_rate}


def test_every_example_round_trips_through_the_broker(isolated: KafkaSettings) -> None:
    producer = Producer(isolated, "test")
    sent: dict[str, list[tuple[dict, dict]]] = {}
    for name, contract in load_contracts().items():
        serde = TopicSerde.for_topic(name, isolated)
        for _, example in contract.examples():
            producer.produce(serde, example["key"], example["value"])
            sent.setdefault(serde.topic, []).append((example["key"], example["value"]))
    assert producer.flush(30) == 0
    for topic, records in sent.items():
        acked = REGISTRY.get_sample_value("entrain_records_produced_total", {"service": "test", "topic": topic})
        assert acked == len(records), topic

    received: dict[str, list[tuple[dict, dict | None]]] = {}
    loop = ConsumerLoop(isolated, "test", f"rt-{uuid.uuid4().hex}", list(load_contracts()),
                        lambda r: received.setdefault(r.topic, []).append((r.key, r.value)), producer)
    loop.run(max_records=sum(map(len, sent.values())), idle_timeout_s=20)
    assert {t: sorted(map(repr, v)) for t, v in received.items()} == {t: sorted(map(repr, v)) for t, v in sent.items()}


def test_poison_records_go_to_the_dlq_with_reasons_and_good_records_keep_flowing(isolated: KafkaSettings) -> None:
    producer = Producer(isolated, "test")
    serde = TopicSerde.for_topic(TELEMETRY, isolated)
    key = {"listener_id": f"poison-{uuid.uuid4().hex}"}  # one key: one partition, order kept
    garbage = b"\xc3\x01not avro at all"  # the single-object framing the kit wrote before the registry
    out_of_range = telemetry_value(2, heart_rate=999)
    producer.produce(serde, key, telemetry_value(1))
    producer.produce_raw(serde.topic, serde.encode_key(key), garbage)
    producer.produce(serde, key, out_of_range)
    producer.produce(serde, key, telemetry_value(3))
    assert producer.flush(30) == 0

    handled: list[Record] = []

    def handler(record: Record) -> None:
        assert record.value is not None
        if record.value["heart_rate_bpm"] > 250:
            raise InvalidRecord(f"heart_rate_bpm {record.value['heart_rate_bpm']} outside 25-250")
        handled.append(record)

    group = f"poison-{uuid.uuid4().hex}"
    loop = ConsumerLoop(isolated, "test", group, [TELEMETRY], handler, producer)
    stats = loop.run(max_records=2, idle_timeout_s=20)
    mine = [r for r in handled if r.key == key]
    assert [r.value["heart_rate_bpm"] for r in mine if r.value] == [120, 120]
    assert stats.dead_lettered == 2

    dlq = [m for m in read_all(isolated, isolated.topic(TELEMETRY + ".dlq"), 2)
           if m.key() == serde.encode_key(key)]
    assert len(dlq) == 2
    by_class = {dict(m.headers())["dlq.reason_class"]: m for m in dlq}
    undecodable, invalid = by_class[b"undecodable"], by_class[b"invalid"]
    assert undecodable.value() == garbage
    assert b"not in Confluent wire format" in dict(undecodable.headers())["dlq.reason"]
    assert invalid.value() == serde.encode_value(out_of_range)
    assert dict(invalid.headers())["dlq.reason"] == b"heart_rate_bpm 999 outside 25-250"
    partition = mine[0].partition
    for m in dlq:
        h = dict(m.headers())
        assert h["dlq.source.topic"] == serde.topic.encode()
        assert h["dlq.source.partition"] == str(partition).encode()
        assert h["dlq.service"] == b"test"
    offsets = sorted(int(dict(m.headers())["dlq.source.offset"]) for m in dlq)
    assert offsets == [mine[0].offset + 1, mine[0].offset + 2]
    assert committed(isolated, group, serde.topic, 6)[partition] == mine[1].offset + 1


def test_a_bug_stops_the_loop_and_the_failed_record_is_not_committed(isolated: KafkaSettings) -> None:
    settings = isolated
    producer = Producer(settings, "test")
    serde = TopicSerde.for_topic(TELEMETRY, settings)
    key = {"listener_id": "bug"}
    for n in range(5):
        producer.produce(serde, key, telemetry_value(n, heart_rate=60 + n))
    assert producer.flush(30) == 0
    group = f"bug-{uuid.uuid4().hex}"
    seen: list[int] = []

    def buggy(record: Record) -> None:
        assert record.value is not None
        if record.value["heart_rate_bpm"] == 62:
            raise ZeroDivisionError("a bug")
        seen.append(record.value["heart_rate_bpm"])

    with pytest.raises(ZeroDivisionError):
        ConsumerLoop(settings, "test", group, [TELEMETRY], buggy, producer).run(idle_timeout_s=20)
    assert seen == [60, 61]

    again: list[int] = []
    ConsumerLoop(settings, "test", group, [TELEMETRY],
                 lambda r: again.append(r.value["heart_rate_bpm"]), producer).run(max_records=3, idle_timeout_s=20)
    assert again == [62, 63, 64]


def test_a_failed_delivery_stops_the_loop_and_its_input_is_not_committed(
        isolated: KafkaSettings, capsys: pytest.CaptureFixture[str]) -> None:
    """The handler's output is refused by the broker (larger than the output topic's
    max.message.bytes): the input offset must not be committed, and the failure shows in the
    metrics and the logs."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource
    from prometheus_client import REGISTRY

    from kit.producer import DeliveryFailed

    settings = isolated
    out = TopicSerde.for_topic("soundtrack.requests.v1", settings)
    admin = AdminClient(settings.client_config())
    small = ConfigResource(ConfigResource.Type.TOPIC, out.topic, incremental_configs=[
        ConfigEntry("max.message.bytes", "200", incremental_operation=AlterConfigOpType.SET)])
    for future in admin.incremental_alter_configs([small]).values():
        future.result(30)
    producer = Producer(settings, "test")
    serde = TopicSerde.for_topic(TELEMETRY, settings)
    key = {"listener_id": f"too-large-{uuid.uuid4().hex}"}
    for n in range(3):
        producer.produce(serde, key, telemetry_value(n, heart_rate=60 + n))
    assert producer.flush(30) == 0
    group = f"fail-{uuid.uuid4().hex}"
    failed_before = REGISTRY.get_sample_value("entrain_produce_errors_total",
                                              {"service": "test", "topic": out.topic}) or 0.0

    def handler(record: Record) -> None:  # an output far over 200 bytes
        producer.produce_raw(out.topic, b"k", os.urandom(5000))  # incompressible: lz4 would shrink repeats

    with pytest.raises(DeliveryFailed, match="not acknowledged"):
        ConsumerLoop(settings, "test", group, [TELEMETRY], handler, producer).run(idle_timeout_s=20)
    assert committed(settings, group, serde.topic, serde.contract.partitions) == {}
    failed = REGISTRY.get_sample_value("entrain_produce_errors_total", {"service": "test", "topic": out.topic})
    assert failed is not None and failed > failed_before
    logs = capsys.readouterr()
    assert "delivery_failed" in logs.out + logs.err and "not_committing" in logs.out + logs.err

    # Fixed (the limit raised again), a new loop consumes the same records and commits.
    large = ConfigResource(ConfigResource.Type.TOPIC, out.topic, incremental_configs=[
        ConfigEntry("max.message.bytes", "1048588", incremental_operation=AlterConfigOpType.SET)])
    for future in admin.incremental_alter_configs([large]).values():
        future.result(30)
    again: list[int] = []

    def fixed(record: Record) -> None:
        assert record.value is not None
        again.append(record.value["heart_rate_bpm"])
        producer.produce_raw(out.topic, b"k", os.urandom(5000))  # incompressible: lz4 would shrink repeats

    ConsumerLoop(settings, "test", group, [TELEMETRY], fixed, producer).run(max_records=3, idle_timeout_s=20)
    assert sorted(again) == [60, 61, 62]
    assert sum(committed(settings, group, serde.topic, serde.contract.partitions).values()) == 3


def request_value(listener: str, sequence: int, deadline: int, requested_at: int) -> dict[str, Any]:
    example = load_contracts()[REQUESTS].examples()[0][1]["value"]
    return {**example, "listener_id": listener, "session_id": "s-edf", "sequence": sequence,
            "request_id": f"r-{sequence}-{requested_at}", "deadline": deadline, "requested_at": requested_at}


def test_held_records_are_served_earliest_deadline_first_and_commits_stop_below_the_unserved(
        isolated: KafkaSettings) -> None:
    """Five requests with deadlines in reverse arrival order and a replacement of one of them: served
    earliest deadline first, the replaced one never; a bug on the third served leaves the partition
    committed below every record not done (the two served ones come again: at-least-once)."""
    producer = Producer(isolated, "test")
    serde = TopicSerde.for_topic(REQUESTS, isolated)
    listener = uuid.uuid4().hex * 2
    soon = int(time.time() * 1000) + 600_000  # far ahead: nothing is late
    sent = [request_value(listener, seq, soon + (5 - seq) * 1000, soon - 10_000) for seq in range(5)]
    sent.append(request_value(listener, 1, soon + 4000, soon - 5_000))  # the scheduler replaced position 1
    for value in sent:
        producer.produce(serde, {"listener_id": listener}, value)
    assert producer.flush(30) == 0
    group = f"edf-{uuid.uuid4().hex}"
    seen: list[tuple[int, int]] = []
    partitions: set[int] = set()

    def handler(record: Record, bug_at: int | None = 2) -> None:
        assert record.value is not None
        if record.value["sequence"] == bug_at:
            raise ZeroDivisionError("a bug")
        seen.append((record.value["sequence"], record.value["requested_at"]))
        partitions.add(record.partition)

    def loop(handle: Any) -> ConsumerLoop:
        return ConsumerLoop(isolated, "test", group, [REQUESTS], handle, producer,
                            deadline_of=soundtrack_deadline, version_of=soundtrack_position)

    superseded_before = REGISTRY.get_sample_value("entrain_records_superseded_total",
                                                  {"service": "test", "topic": serde.topic}) or 0.0
    with pytest.raises(ZeroDivisionError):
        loop(handler).run(idle_timeout_s=20)
    assert seen == [(4, soon - 10_000), (3, soon - 10_000)]
    (partition,) = partitions
    assert committed(isolated, group, serde.topic, serde.contract.partitions).get(partition, 0) == 0

    seen.clear()
    stats = loop(lambda r: handler(r, bug_at=None)).run(max_records=6, idle_timeout_s=20)
    assert [s for s, _ in seen] == [4, 3, 2, 1, 0]
    assert (1, soon - 5_000) in seen and (1, soon - 10_000) not in seen
    assert stats.handled == 6  # five served and the superseded one
    assert committed(isolated, group, serde.topic, serde.contract.partitions) == {partition: 6}
    superseded = REGISTRY.get_sample_value("entrain_records_superseded_total",
                                           {"service": "test", "topic": serde.topic})
    assert superseded == superseded_before + 2  # once in each run


def test_a_held_record_that_fails_the_check_is_dead_lettered_before_it_can_replace_or_be_replaced(
        isolated: KafkaSettings) -> None:
    """Position 0: a valid request, then a newer invalid version (it must not replace the valid one);
    position 1: two invalid versions (the older must not vanish as superseded). Both invalid
    versions of 1 and the invalid one of 0 are dead-lettered with the check's reason; the valid
    request is served."""
    producer = Producer(isolated, "test")
    serde = TopicSerde.for_topic(REQUESTS, isolated)
    listener = uuid.uuid4().hex * 2
    soon = int(time.time() * 1000) + 600_000

    def bad(value: dict[str, Any]) -> dict[str, Any]:
        return {**value, "params": {**value["params"], "tempo_bpm": 999.0}}

    sent = [request_value(listener, 0, soon, soon - 10_000), bad(request_value(listener, 0, soon, soon - 5_000)),
            bad(request_value(listener, 1, soon, soon - 10_000)), bad(request_value(listener, 1, soon, soon - 5_000))]
    for value in sent:
        producer.produce(serde, {"listener_id": listener}, value)
    assert producer.flush(30) == 0
    served: list[str] = []

    def check(record: Record) -> str | None:
        assert record.value is not None
        tempo = record.value["params"]["tempo_bpm"]
        return f"tempo_bpm {tempo} outside 40-240" if tempo > 240 else None

    def handler(record: Record) -> None:
        assert record.value is not None
        served.append(record.value["request_id"])

    stats = ConsumerLoop(isolated, "test", f"check-{uuid.uuid4().hex}", [REQUESTS], handler, producer,
                         deadline_of=soundtrack_deadline, version_of=soundtrack_position,
                         check=check).run(idle_timeout_s=10)
    assert served == [sent[0]["request_id"]]
    assert stats.dead_lettered == 3
    dlq = [m for m in read_all(isolated, isolated.topic(REQUESTS + ".dlq"), 3)
           if m.key() == serde.encode_key({"listener_id": listener})]
    assert sorted(m.value() for m in dlq) == sorted(serde.encode_value(v) for v in sent[1:])
    assert {dict(m.headers())["dlq.reason"] for m in dlq} == {b"tempo_bpm 999.0 outside 40-240"}


def test_a_fenced_static_member_joins_again_and_keeps_consuming(isolated: KafkaSettings) -> None:
    """Another consumer joins with the loop's group.instance.id (what librdkafka #3437 does to a
    static member after a broker restart): the broker fences the loop's consumer for good, and the
    loop replaces it with a new one that joins again and consumes what follows."""
    producer = Producer(isolated, "test")
    serde = TopicSerde.for_topic(TELEMETRY, isolated)
    key = {"listener_id": "fenced"}
    group, instance = f"fence-{uuid.uuid4().hex}", f"test-{uuid.uuid4().hex[:8]}"
    membership = {"group.instance.id": instance, "session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
    for n in range(3):
        producer.produce(serde, key, telemetry_value(n, heart_rate=60 + n))
    assert producer.flush(30) == 0
    seen: set[int] = set()
    rejoins_before = REGISTRY.get_sample_value("entrain_consumer_rejoins_total", {"service": "test"}) or 0.0

    def handle(record: Record) -> None:
        assert record.value is not None
        seen.add(record.value["heart_rate_bpm"])
        if {60, 61, 62, 100, 101, 102} <= seen:
            loop.stop()
        if record.value["heart_rate_bpm"] != 60 or 100 in seen:
            return
        intruder = Consumer({**isolated.client_config(), "group.id": group,
                             "partition.assignment.strategy": "cooperative-sticky", **membership})
        intruder.subscribe([serde.topic])
        deadline = time.monotonic() + 30
        while not intruder.assignment() and time.monotonic() < deadline:
            intruder.poll(0.2)
        assert intruder.assignment(), "the intruder never joined"
        intruder.close()
        for n in range(3):  # after the fence: only a consumer that joined again sees these
            producer.produce(serde, key, telemetry_value(n, heart_rate=100 + n))
        assert producer.flush(30) == 0

    loop = ConsumerLoop(isolated, "test", group, [TELEMETRY], handle, producer, consumer_config=membership)
    loop.run(idle_timeout_s=20)  # stops when idle, or when the handler saw everything (below)
    assert {60, 61, 62, 100, 101, 102} <= seen
    assert REGISTRY.get_sample_value("entrain_consumer_rejoins_total", {"service": "test"}) == rejoins_before + 1


CONSUMER_PROCESS = """
import sys
from kit.consumer import ConsumerLoop
from kit.logs import configure_logging
from kit.producer import Producer
from kit.settings import KafkaSettings
configure_logging("sigterm-test")
settings = KafkaSettings.from_env()
count = 0
def handle(record):
    global count
    count += 1
    if count == 3:
        print("handled 3", flush=True)
loop = ConsumerLoop(settings, "sigterm-test", sys.argv[1], ["listener.telemetry.v1"], handle, Producer(settings, "t"))
loop.install_signal_handlers()
stats = loop.run()
print(f"stopped after {stats.handled}", flush=True)
"""


def test_sigterm_stops_the_consumer_gracefully_and_commits(isolated: KafkaSettings) -> None:
    settings = isolated
    producer = Producer(settings, "test")
    serde = TopicSerde.for_topic(TELEMETRY, settings)
    for n in range(3):
        producer.produce(serde, {"listener_id": "sig"}, telemetry_value(n))
    assert producer.flush(30) == 0
    group = f"sig-{uuid.uuid4().hex}"
    env = {**os.environ, "ENTRAIN_TOPIC_PREFIX": settings.topic_prefix,
           "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "services")}
    proc = subprocess.Popen([sys.executable, "-c", CONSUMER_PROCESS, group], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "handled 3"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert out.strip() == "stopped after 3"
    assert sum(committed(settings, group, serde.topic, 6).values()) == 3


def test_acknowledged_records_are_counted_by_the_poll_that_served_them(isolated: KafkaSettings) -> None:
    producer = Producer(isolated, "poll-count-test")
    serde = TopicSerde.for_topic(TELEMETRY, isolated)
    for n in range(500):
        producer.produce(serde, {"listener_id": f"{n % 7:064x}"}, telemetry_value(n))
    while len(producer):
        producer.poll(0.1)
    acked = REGISTRY.get_sample_value("entrain_records_produced_total",
                                      {"service": "poll-count-test", "topic": serde.topic})
    assert acked == 500


def test_topic_creation_is_idempotent_and_refuses_partition_changes(kafka: KafkaSettings) -> None:
    settings = replace(kafka, topic_prefix=f"test-topics-{uuid.uuid4().hex[:8]}.")
    created = ensure_topics(settings)
    assert settings.topic(TELEMETRY) in created
    assert settings.topic(TELEMETRY + ".dlq") in created
    assert "royalty.events.v1.dlq" not in {t.removeprefix(settings.topic_prefix) for t in created}
    assert ensure_topics(settings) == []

    admin = AdminClient(kafka.client_config())
    meta = admin.list_topics(timeout=10).topics
    assert len(meta[settings.topic(TELEMETRY)].partitions) == 6

    wrong = replace(kafka, topic_prefix=f"test-wrong-{uuid.uuid4().hex[:8]}.")
    admin.create_topics([NewTopic(wrong.topic("listener.plays.v1"), num_partitions=2)])[
        wrong.topic("listener.plays.v1")].result()
    try:
        with pytest.raises(PartitionMismatch, match="has 2 partitions, manifest says 6"):
            ensure_topics(wrong)
    finally:
        delete_prefixed_topics(wrong)
        delete_prefixed_topics(settings)


def test_health_server_serves_metrics_liveness_and_readiness(isolated: KafkaSettings) -> None:
    server = HealthServer("127.0.0.1", 0).start()
    ready = {"consumer": False}
    server.add_ready_check("consumer", lambda: ready["consumer"])
    base = f"http://127.0.0.1:{server.port}"
    try:
        producer = Producer(isolated, "health-test")
        serde = TopicSerde.for_topic(TELEMETRY, isolated)
        producer.produce(serde, {"listener_id": "h"}, telemetry_value(0))
        assert producer.flush(30) == 0
        metrics = urllib.request.urlopen(f"{base}/metrics").read().decode()
        assert f'entrain_records_produced_total{{service="health-test",topic="{serde.topic}"}} 1.0' in metrics
        assert urllib.request.urlopen(f"{base}/healthz").status == 200
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(f"{base}/readyz")
        assert not_ready.value.code == 503
        assert b'"failing":["consumer"]' in not_ready.value.read()
        ready["consumer"] = True
        assert urllib.request.urlopen(f"{base}/readyz").status == 200
    finally:
        server.stop()
