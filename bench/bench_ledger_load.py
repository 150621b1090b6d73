"""How long royalty takes to load its duplicate-play state when partitions are assigned, and that
its poll loop keeps turning meanwhile.

Royalty's duplicate-play state is the compacted ledger (one entry per decided play, kept 400
days; ingest accepts plays up to 30 days old, so a full window is 30 days of plays). On every
assignment it pauses the new partitions and reads their ledger partitions in a thread
(``royalty.ledger``); the poll loop keeps polling and resumes them when the load is installed.
This bench writes ``--entries`` ledger entries shaped like production's (PAID plays of 3-second
AI segments, each listener's one after the other, ``--listeners`` listeners, every segment known
to the processor as after its start-up catch-up) over the 6 partitions, then times

  raw     a plain consumer reading the same records to their end (no decoding): the baseline
  load    a real ``RoyaltyProcessor`` joining a group and being assigned all 6 partitions, from the
          assignment to the installed history (decode, fill the play-id sets and rebuild every
          listener's paid time from the segments), with the longest turn of its poll loop meanwhile

and extrapolates, by stated arithmetic, to a 30-day window at ``--plays-per-day``: entries per
partition x partitions one instance of ``--instances`` owns / the measured load rate, against the
load's own limit (``LOAD_TIMEOUT_S``). The poll loop's longest turn is what the group sees
(``max.poll.interval.ms`` 300 s; heartbeats run in librdkafka's thread). Last line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from dataclasses import replace

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from tests.royalty_fixtures import write_ledger

from kit.contracts import contract
from kit.settings import SESSION_TIMEOUT_MS, KafkaSettings
from kit.topics import delete_prefixed_topics, ensure_topics
from royalty.ledger import LOAD_TIMEOUT_S
from royalty.rates import RateCard
from royalty.service import RoyaltyProcessor, RoyaltySettings

LEDGER = "royalty.play-ledger.v1"
MAX_POLL_INTERVAL_S = 300
SESSION_TIMEOUT_S = SESSION_TIMEOUT_MS / 1000


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


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
        _, segments = write_ledger(kafka, args.entries, args.listeners)
        print(f"wrote {args.entries:,} ledger entries in {time.perf_counter() - started:.1f} s", flush=True)
        raw_s, raw_count = raw_read_s(kafka, partitions)
        processor = RoyaltyProcessor(kafka, RoyaltySettings(instance_id=f"bench-{uuid.uuid4().hex[:6]}",
                                                            group_id=f"bench-{uuid.uuid4().hex[:6]}"), RateCard.load())
        processor.tables.segments.update(segments)
        rss_before = resident_bytes()
        loop = threading.Thread(target=processor.run, name="royalty-loop", daemon=True)
        loop.start()
        while processor.stats.loads == 0 and loop.is_alive():
            time.sleep(0.1)
        rss_growth = resident_bytes() - rss_before  # the installed histories (and the reader's buffers)
        processor.stop()
        loop.join(60)
        if processor.stats.loads == 0:
            raise SystemExit("the processor stopped before its ledger loaded")
        loaded, load_s = processor.stats.loaded_entries, processor.stats.load_s
        longest_turn_s = processor.stats.longest_turn_while_loading_s
    finally:
        delete_prefixed_topics(kafka)
    rate = loaded / load_s
    window = args.plays_per_day * 30
    owned = -(-partitions // args.instances)  # partitions one instance owns
    per_instance = window * owned // partitions
    projected_s = per_instance / rate
    print(f"{loaded:,} entries are a full 30-day window at {loaded // 30:,} plays a day, loaded in {load_s:.1f} s",
          flush=True)
    print(f"raw read {raw_count:,} in {raw_s:.2f} s ({raw_count / raw_s:,.0f}/s); load {loaded:,} in {load_s:.2f} s "
          f"({rate:,.0f}/s), the poll loop's longest turn meanwhile {longest_turn_s:.2f} s; a 30-day window at "
          f"{args.plays_per_day:,} plays/day is {window:,} entries, {per_instance:,} for one of {args.instances} "
          f"instances: {projected_s:,.0f} s of loading (limit {LOAD_TIMEOUT_S:,.0f} s); resident memory grew "
          f"{rss_growth / loaded:,.0f} bytes per entry, {rss_growth / loaded * per_instance / 2**30:.1f} GiB for that "
          f"window", flush=True)
    print("RESULT " + json.dumps({
        "entries": loaded, "partitions": partitions, "raw_read_s": round(raw_s, 2),
        "raw_entries_s": round(raw_count / raw_s), "load_s": round(load_s, 2), "load_entries_s": round(rate),
        "load_vs_raw_ratio": round((loaded / load_s) / (raw_count / raw_s), 3),
        "longest_poll_turn_while_loading_s": round(longest_turn_s, 3),
        "session_timeout_s": SESSION_TIMEOUT_S, "max_poll_interval_s": MAX_POLL_INTERVAL_S,
        "measured_window_plays_per_day": loaded // 30,
        "plays_per_day": args.plays_per_day, "window_entries": window, "instances": args.instances,
        "projected_load_s": round(projected_s, 1), "load_timeout_s": LOAD_TIMEOUT_S,
        "fits_load_timeout": projected_s < LOAD_TIMEOUT_S,
        "resident_bytes_per_entry": round(rss_growth / loaded),
        "projected_resident_gib": round(rss_growth / loaded * per_instance / 2**30, 2),
    }))


if __name__ == "__main__":
    main()
