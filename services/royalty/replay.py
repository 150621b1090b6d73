"""Replay royalty's dead-lettered plays: ``python -m royalty.replay`` (``make replay-plays``).

Reads ``listener.plays.v1.dlq`` from its beginning to its end now and produces every record
royalty dead-lettered (header ``dlq.service: royalty``; ``--reason-class`` narrows it, default
``invalid``: plays whose inputs never came or that no rate priced) back to ``listener.plays.v1``
with its original key and bytes. Run it after the cause is fixed (the segment or work exists, the
rate card prices the play). Royalty decides each replayed play once: a play id with a PAID or
UNPAID ledger entry is a duplicate, a DEAD_LETTERED entry is not. Undecodable records are not
replayed (they would only be dead-lettered again). Prints how many were replayed.
"""

from __future__ import annotations

import argparse

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from kit.consumer import is_partition_eof, source_of
from kit.producer import Producer
from kit.settings import KafkaSettings

PLAYS = "listener.plays.v1"


def replay(kafka: KafkaSettings, reason_class: str = "invalid") -> int:
    dlq, plays = kafka.topic(f"{PLAYS}.dlq"), kafka.topic(PLAYS)
    consumer = Consumer({**kafka.client_config(), "group.id": "royalty-replay", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    parts = consumer.list_topics(dlq, timeout=30).topics[dlq].partitions
    consumer.assign([TopicPartition(dlq, p, OFFSET_BEGINNING) for p in parts])
    producer, replayed = Producer(kafka, "royalty-replay"), 0
    at_end: set[int] = set()
    while len(at_end) < len(parts):
        for msg in consumer.consume(1000, 5):
            if is_partition_eof(msg):
                at_end.add(source_of(msg)[1])
                continue
            if msg.error() is not None:
                continue
            headers = dict(msg.headers() or [])
            if headers.get("dlq.service") == b"royalty" and headers.get("dlq.reason_class") == reason_class.encode():
                producer.produce_raw(plays, msg.key(), msg.value(), headers=[("replayed_from", dlq.encode())])
                replayed += 1
    consumer.close()
    if producer.flush(60):
        raise RuntimeError("replayed plays were not acknowledged within 60 s")
    producer.raise_if_failed(0)
    return replayed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reason-class", default="invalid")
    args = parser.parse_args()
    print(f"replayed {replay(KafkaSettings.from_env(), args.reason_class)} dead-lettered plays to {PLAYS}")


if __name__ == "__main__":
    main()
