"""How long royalty takes to load its duplicate-play state when partitions are assigned.

Royalty's duplicate-play state is the compacted ledger (one entry per decided play, kept 400
days; ingest accepts plays up to 30 days old, so a full window is 30 days of plays). On every
assignment it reads the ledger partitions of the plays partitions it was given, inside the
rebalance callback: the poll loop waits for it. This bench writes ``--entries`` ledger entries
shaped like production's (PAID plays of 3-second AI segments, each listener's one after the other,
``--listeners`` listeners, every segment known to the processor as after its start-up catch-up)
over the 6 partitions, then times

  raw     a plain consumer reading the same records to their end (no decoding): the baseline
  load    ``RoyaltyProcessor._load_ledger`` for all 6 partitions (decode, fill the play-id map and
          rebuild every listener's paid time from the segments)

and extrapolates, by stated arithmetic, to a 30-day window at ``--plays-per-day``: entries per
partition x partitions one instance of ``--instances`` owns / the measured load rate, against
librdkafka's ``max.poll.interval.ms`` (300 s; heartbeats run in librdkafka's own thread, so the
15 s session timeout is not what a long callback breaks). Last line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from dataclasses import replace

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka import Producer as RawProducer

from kit.contracts import contract
from kit.producer import DEFAULT_CONFIG
from kit.serde import TopicSerde
from kit.settings import KafkaSettings
from kit.topics import delete_prefixed_topics, ensure_topics
from royalty.rates import RateCard
from royalty.rules import SegmentFacts
from royalty.service import RoyaltyProcessor, RoyaltySettings

LEDGER = "royalty.play-ledger.v1"
MAX_POLL_INTERVAL_S = 300


SEGMENT_MS = 3_000


def write_entries(kafka: KafkaSettings, n: int, partitions: int, listeners: int) -> dict[str, SegmentFacts]:
    """The entries, and the segment facts the processor would hold for them."""
    serde = TopicSerde.for_topic(LEDGER, kafka)
    example = next(v["value"] for name, v in contract(LEDGER).examples() if name == "paid-ai-segment.json")
    producer = RawProducer({**kafka.client_config(), **DEFAULT_CONFIG})
    start = int(time.time() * 1000) - 86_400_000
    segments = {}
    for i in range(n):
        play_id, segment_id, listener = str(uuid.uuid4()), f"seg-{i:024x}", i % listeners
        at = start + (i // listeners) * SEGMENT_MS
        segments[segment_id] = SegmentFacts(f"{listener:064x}", SEGMENT_MS, (("wk-1", 1_000_000),), at)
        value = {**example, "play_id": play_id, "segment_id": segment_id, "play_started_at": at,
                 "heard_ms": SEGMENT_MS, "paid_ms": SEGMENT_MS}
        producer.produce(serde.topic, key=serde.encode_key({"play_id": play_id}), value=serde.encode_value(value),
                         partition=listener % partitions)  # a listener's plays share a partition
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise SystemExit("ledger entries not acknowledged")
    return segments


def raw_read_s(kafka: KafkaSettings, partitions: int) -> tuple[float, int]:
    topic = kafka.topic(LEDGER)
    consumer = Consumer({**kafka.client_config(), "group.id": f"bench-{uuid.uuid4().hex}", "enable.auto.commit": False,
                         "enable.partition.eof": True, "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    started, done, count = time.perf_counter(), set(), 0
    while len(done) < partitions:
        for msg in consumer.consume(5000, 0.5):
            if msg.error() is None:
                count += 1
            else:
                done.add(msg.partition())
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=300_000)
    parser.add_argument("--plays-per-day", type=int, default=1_000_000)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--listeners", type=int, default=2_000)
    args = parser.parse_args()
    kafka = replace(KafkaSettings.from_env(), topic_prefix=f"bench-ledger-{uuid.uuid4().hex[:6]}.")
    ensure_topics(kafka)
    partitions = contract(LEDGER).partitions
    try:
        started = time.perf_counter()
        segments = write_entries(kafka, args.entries, partitions, args.listeners)
        print(f"wrote {args.entries:,} ledger entries in {time.perf_counter() - started:.1f} s", flush=True)
        raw_s, raw_count = raw_read_s(kafka, partitions)
        processor = RoyaltyProcessor(kafka, RoyaltySettings(instance_id=f"bench-{uuid.uuid4().hex[:6]}",
                                                            group_id=f"bench-{uuid.uuid4().hex[:6]}"), RateCard.load())
        processor.tables.segments.update(segments)
        started = time.perf_counter()
        loaded = processor._load_ledger(list(range(partitions)))
        load_s = time.perf_counter() - started
    finally:
        delete_prefixed_topics(kafka)
    rate = loaded / load_s
    window = args.plays_per_day * 30
    owned = -(-partitions // args.instances)  # partitions one instance owns
    per_instance = window * owned // partitions
    projected_s = per_instance / rate
    print(f"raw read {raw_count:,} in {raw_s:.2f} s ({raw_count / raw_s:,.0f}/s); load {loaded:,} in {load_s:.2f} s "
          f"({rate:,.0f}/s); a 30-day window at {args.plays_per_day:,} plays/day is {window:,} entries, "
          f"{per_instance:,} for one of {args.instances} instances: {projected_s:,.0f} s", flush=True)
    print("RESULT " + json.dumps({
        "entries": loaded, "partitions": partitions, "raw_read_s": round(raw_s, 2),
        "raw_entries_s": round(raw_count / raw_s), "load_s": round(load_s, 2), "load_entries_s": round(rate),
        "load_vs_raw_ratio": round((loaded / load_s) / (raw_count / raw_s), 3),
        "plays_per_day": args.plays_per_day, "window_entries": window, "instances": args.instances,
        "projected_load_s": round(projected_s, 1), "max_poll_interval_s": MAX_POLL_INTERVAL_S,
        "fits_max_poll_interval": projected_s < MAX_POLL_INTERVAL_S,
    }))


if __name__ == "__main__":
    main()
