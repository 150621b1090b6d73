"""The real schema registry (Apicurio, started by `make topics`/`make test`): our topics carry
Confluent wire format that a stock client decodes with nothing of ours but the registry URL;
the kit's bytes are confluent-kafka's serializer's bytes; the registry itself refuses an
incompatible new version."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from kit.contracts import load_contracts
from kit.producer import Producer
from kit.serde import TopicSerde, register_schemas
from kit.settings import SCHEMAS_DIR, KafkaSettings
from tests.kafka_helpers import read_to_end

STOCK_TOPICS = ("listener.telemetry.v1", "soundtrack.segments.v1", "royalty.events.v1")

# A consumer that knows the bootstrap servers and the registry URL, and nothing of Entrain.
STOCK_CLIENT = textwrap.dedent("""
    import faulthandler, json, sys
    faulthandler.dump_traceback_later(100, exit=True)  # a hang shows where it hangs (the test waits 120 s)
    from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    bootstrap, registry_url, topics = sys.argv[1], sys.argv[2], sys.argv[3:]
    # A request timeout, as any deployment sets (the client's default is none): in 3 of ~8 full test
    # runs one request (the associations lookup, a 404 from Apicurio in ~10 ms when tried alone)
    # never got an answer and the client waited for ever; with a timeout it is retried.
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry_url, "timeout": 10}))
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "stock-client", "enable.partition.eof": True,
                         "enable.auto.commit": False})
    out = {}
    for topic in topics:
        parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        ended = set()
        while len(ended) < len(parts):
            for msg in consumer.consume(100, 1.0):
                if msg.error():
                    ended.add(msg.partition())
                    continue
                key = deserialize(msg.key(), SerializationContext(topic, MessageField.KEY))
                value = deserialize(msg.value(), SerializationContext(topic, MessageField.VALUE))
                out.setdefault(topic, []).append({"key": key, "value": value})
    print(json.dumps(out, default=str))
""")


def test_a_stock_client_with_only_the_registry_url_reads_our_topics(isolated: KafkaSettings) -> None:
    producer = Producer(isolated, "test")
    sent = {}
    for name in STOCK_TOPICS:
        serde = TopicSerde.for_topic(name, isolated)
        examples = [example for _, example in serde.contract.examples()]
        for example in examples:
            producer.produce(serde, example["key"], example["value"])
        sent[serde.topic] = examples
    assert producer.flush(30) == 0

    telemetry = read_to_end(isolated, isolated.topic("listener.telemetry.v1"))[0]
    assert telemetry.value()[:1] == b"\x00"
    schema_id = int.from_bytes(telemetry.value()[1:5], "big")
    with urllib.request.urlopen(f"{isolated.registry.url}/schemas/ids/{schema_id}", timeout=10) as answer:
        registered = json.loads(json.loads(answer.read())["schema"])
    assert registered == load_contracts()["listener.telemetry.v1"].value.schema()

    stock = subprocess.run([sys.executable, "-I", "-c", STOCK_CLIENT, isolated.bootstrap_servers,
                            isolated.registry.url, *sent], capture_output=True, text=True, timeout=120, cwd="/")
    assert stock.returncode == 0, stock.stderr[-2000:]
    read = json.loads(stock.stdout)
    assert sorted(read) == sorted(sent)
    for topic, examples in sent.items():
        assert len(read[topic]) == len(examples)
        assert sorted(json.dumps(r["key"], sort_keys=True) for r in read[topic]) == \
            sorted(json.dumps(e["key"], sort_keys=True) for e in examples)
        ours = {json.dumps(e["value"].get("event_id") or e["value"].get("segment_id") or e["value"].get("line_id"))
                for e in examples}
        theirs = {json.dumps(r["value"].get("event_id") or r["value"].get("segment_id") or r["value"].get("line_id"))
                  for r in read[topic]}
        assert theirs == ours


def test_the_kit_writes_the_bytes_confluent_kafka_s_serializer_writes(isolated: KafkaSettings) -> None:
    client = SchemaRegistryClient(isolated.registry.client_config())
    for name, topic_contract in load_contracts().items():
        serde = TopicSerde.for_topic(name, isolated)
        serializer = AvroSerializer(client, topic_contract.value.schema_str(),
                                    conf={"auto.register.schemas": False, "use.latest.version": False})
        deserializer = AvroDeserializer(client)
        context = SerializationContext(serde.topic, MessageField.VALUE)
        for _, example in topic_contract.examples():
            ours = serde.encode_value(example["value"])
            assert ours == serializer(example["value"], context), name
            assert json.dumps(deserializer(ours, context), default=str) is not None
            assert serde.decode_value(ours) == serde.decode_value(serializer(example["value"], context))


def test_the_registry_refuses_an_incompatible_new_version(isolated: KafkaSettings, tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_DIR / "listener.plays.v1", schemas / "listener.plays.v1")
    folder = schemas / "listener.plays.v1"
    latest = json.loads((folder / "value.v1.avsc").read_text())
    latest["fields"].append({"name": "mood", "type": "string", "doc": "required, no default: not BACKWARD"})
    (folder / "value.v2.avsc").write_text(json.dumps(latest))
    manifest = (folder / "manifest.yaml").read_text()
    (folder / "manifest.yaml").write_text(manifest.replace("value:\n  compatibility: BACKWARD\n  versions: [1]",
                                                           "value:\n  compatibility: BACKWARD\n  versions: [1, 2]"))
    (folder / "examples" / "v2").mkdir()
    for example in (folder / "examples" / "v1").glob("*.json"):
        record = json.loads(example.read_text())
        record["value"]["mood"] = "calm"
        (folder / "examples" / "v2" / example.name).write_text(json.dumps(record))
    contracts = load_contracts(schemas)
    assert contracts["listener.plays.v1"].value.versions == (1, 2)
    fresh = replace(isolated, topic_prefix=isolated.topic_prefix + "incompatible.")
    with pytest.raises(SchemaRegistryError) as refused:
        register_schemas(fresh, contracts)
    assert refused.value.http_status_code == 409
    versions = SchemaRegistryClient(isolated.registry.client_config()).get_versions(
        fresh.topic("listener.plays.v1") + "-value")
    assert versions == [1]  # v1 stands, v2 was never registered
