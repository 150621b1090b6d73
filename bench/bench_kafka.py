"""Producer and consumer throughput against the local broker, kit vs raw confluent-kafka.

In one run, interleaved (raw, kit, raw, kit, ...):
  raw_produce  confluent_kafka.Producer.produce() of pre-encoded ~200-byte telemetry
               records (the bytes the kit would write), same producer settings as the kit
  kit_produce  kit.producer.Producer.produce() of the equivalent telemetry dicts:
               Avro encoding, delivery-report callbacks and metrics included
  consume      kit.consumer.ConsumerLoop over the kit's records: poll, decode key and
               value, no-op handler, metrics, commits; timed from the first record
               handled to the last (the group join is excluded)
  serializers  µs per value, on the same unique records: the kit's (native/entrain_avro and the
               Confluent wire format framing), confluent-kafka's AvroSerializer (ids from the same
               registry, auto-register off), and bare fastavro.schemaless_writer (the floor);
               and fastavro on 12-field records of one type each (longs, enums, optional
               longs, optional strings): what a field of each kind costs
Each figure is the best of the rounds. Last line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import io
import json
import time
import uuid
from dataclasses import replace
from typing import Any

from confluent_kafka import Consumer
from confluent_kafka import Producer as RawProducer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import schemaless_writer

from kit.consumer import ConsumerLoop, Record
from kit.contracts import contract
from kit.producer import DEFAULT_CONFIG, Producer
from kit.serde import TopicSerde
from kit.settings import KafkaSettings
from kit.topics import delete_prefixed_topics, ensure_topics

TOPIC = "listener.telemetry.v1"


def records(n: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    base = contract(TOPIC).examples()[0][1]["value"]
    return [
        ({"listener_id": f"{i % 5000:064x}"},
         {**base, "listener_id": f"{i % 5000:064x}", "event_id": str(uuid.UUID(int=i)),
          "event_time": base["event_time"] + i, "heart_rate_bpm": 60 + i % 120, "cadence_spm": 150 + i % 40,
          "device": "bench-watch-7-series-ultra"})
        for i in range(n)
    ]


def raw_produce(settings: KafkaSettings, topic: str, encoded: list[tuple[bytes, bytes]]) -> float:
    producer = RawProducer({**settings.client_config(), **DEFAULT_CONFIG})
    start = time.perf_counter()
    for key, value in encoded:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    assert producer.flush(60) == 0
    return len(encoded) / (time.perf_counter() - start)


def kit_produce(settings: KafkaSettings, recs: list[tuple[dict[str, Any], dict[str, Any]]]) -> float:
    producer = Producer(settings, "bench")
    serde = TopicSerde.for_topic(TOPIC, settings)
    start = time.perf_counter()
    for key, value in recs:
        producer.produce(serde, key, value)
        producer.poll(0)
    assert producer.flush(60) == 0
    return len(recs) / (time.perf_counter() - start)


def kit_consume(settings: KafkaSettings, n: int) -> float:
    times: list[float] = []

    def handler(record: Record) -> None:
        if not times:
            times.append(time.perf_counter())

    loop = ConsumerLoop(settings, "bench", f"bench-{uuid.uuid4().hex}", [TOPIC], handler, Producer(settings, "bench"),
                        consumer_config={"fetch.min.bytes": 65536})
    stats = loop.run(max_records=n, idle_timeout_s=30)
    end = time.perf_counter()
    assert stats.handled == n, f"consumed {stats.handled} of {n}"
    return (n - 1) / (end - times[0])


def raw_consume(settings: KafkaSettings, topic: str, n: int) -> float:
    consumer = Consumer({**settings.client_config(), "group.id": f"bench-raw-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False, "fetch.min.bytes": 65536})
    consumer.subscribe([topic])
    got, start = 0, None
    while got < n:
        for msg in consumer.consume(1000, 1.0):
            if msg.error() is None:
                start = start or time.perf_counter()
                got += 1
    end = time.perf_counter()
    consumer.close()
    return (got - 1) / (end - start)


def serializer_us(settings: KafkaSettings, recs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, float]:
    """µs per value for each serializer, on the same records."""
    serde = TopicSerde.for_topic(TOPIC, settings)
    confluent = AvroSerializer(SchemaRegistryClient(settings.registry.client_config()),
                               serde.contract.value.schema_str(), conf={"auto.register.schemas": False})
    context = SerializationContext(serde.topic, MessageField.VALUE)

    def bare(value: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        schemaless_writer(out, serde.value.writer, value)
        return out.getvalue()

    assert serde.encode_value(recs[0][1]) == confluent(recs[0][1], context)  # the same bytes
    out = {}
    for name, encode in (("kit", serde.encode_value), ("confluent", lambda v: confluent(v, context)),
                         ("fastavro", bare)):
        start = time.perf_counter()
        for _, value in recs:
            encode(value)
        out[name] = (time.perf_counter() - start) / len(recs) * 1e6
    return out


def field_costs_us(n: int = 50_000) -> dict[str, float]:
    """µs per record for fastavro on 12-field records of one field type each."""
    from fastavro import parse_schema

    enum = {"type": "enum", "name": "E", "symbols": ["A", "B", "C", "D"]}
    shapes = {"longs": ("long", 123456), "enums": (enum, "C"), "optional_longs": (["null", "long"], 123456),
              "optional_strings": (["null", "string"], "abcdefgh")}
    out = {}
    for name, (kind, value) in shapes.items():
        fields = [{"name": f"f{i}", "type": kind if i == 0 or not isinstance(kind, dict) else "E"} for i in range(12)]
        schema = parse_schema({"type": "record", "name": "R", "fields": fields})
        record = {f"f{i}": value for i in range(12)}
        start = time.perf_counter()
        for _ in range(n):
            schemaless_writer(io.BytesIO(), schema, record)
        out[name] = round((time.perf_counter() - start) / n * 1e6, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    base = KafkaSettings.from_env()
    recs = records(args.records)
    serde = TopicSerde.for_topic(TOPIC, base)
    encoded = [(serde.encode_key(k), serde.encode_value(v)) for k, v in recs]
    size = sum(len(v) for _, v in encoded) / len(encoded)
    print(f"{args.records} telemetry records, {size:.0f} bytes per value on average, {args.rounds} rounds")

    best: dict[str, float] = {}
    for r in range(args.rounds):
        raw_s = replace(base, topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.")
        kit_s = replace(base, topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.")
        ensure_topics(raw_s)
        ensure_topics(kit_s)
        figures = {
            "raw_produce_msgs_s": raw_produce(raw_s, raw_s.topic(TOPIC), encoded),
            "kit_produce_msgs_s": kit_produce(kit_s, recs),
            "raw_consume_msgs_s": raw_consume(raw_s, raw_s.topic(TOPIC), args.records),
            "consume_msgs_s": kit_consume(kit_s, args.records),
        } | {f"{k}_serializer_us": -v for k, v in serializer_us(kit_s, recs).items()}  # negated: best = max
        print(f"round {r + 1}: " + ", ".join(f"{k}={abs(v):,.1f}" for k, v in figures.items()), flush=True)
        delete_prefixed_topics(raw_s)
        delete_prefixed_topics(kit_s)
        for k, v in figures.items():
            best[k] = max(best.get(k, float("-inf")), v)

    result = {
        "records": args.records,
        "value_bytes": round(size),
        "raw_produce_msgs_s": round(best["raw_produce_msgs_s"]),
        "kit_produce_msgs_s": round(best["kit_produce_msgs_s"]),
        "kit_vs_raw_ratio": round(best["kit_produce_msgs_s"] / best["raw_produce_msgs_s"], 3),
        "consume_msgs_s": round(best["consume_msgs_s"]),
        "raw_consume_msgs_s": round(best["raw_consume_msgs_s"]),
        "consume_vs_raw_ratio": round(best["consume_msgs_s"] / best["raw_consume_msgs_s"], 3),
        "kit_serializer_us_per_record": round(-best["kit_serializer_us"], 2),
        "confluent_serializer_us_per_record": round(-best["confluent_serializer_us"], 2),
        "fastavro_us_per_record": round(-best["fastavro_serializer_us"], 2),
        "fastavro_12_field_us": field_costs_us(),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
