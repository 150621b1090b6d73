"""Royalty throughput with transactions (exactly-once) vs without (at-least-once), one run.

The same catalog and the same N plays are published to two topic sets; the royalty
processor runs in this process over each, first transactional (one transaction per
batch: lines + ledger + offsets), then at-least-once (flush, then commit offsets).
Plays/s is measured from the first batch to the last (start-up and the reference
catch-up are excluded). Last line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import uuid
from dataclasses import replace

from tests.royalty_fixtures import Catalog

from kit.settings import KafkaSettings
from kit.topics import delete_prefixed_topics, ensure_topics
from royalty.rates import RateCard
from royalty.service import RoyaltyProcessor, RoyaltySettings


def run_mode(base: KafkaSettings, plays: int, transactional: bool, batch_max: int) -> tuple[float, list[float], int]:
    kafka = replace(base, topic_prefix=f"bench-royalty-{uuid.uuid4().hex[:6]}.")
    ensure_topics(kafka)
    catalog = Catalog(kafka, works=40, segments=500, seed=3)
    catalog.send_plays(catalog.plays(plays))
    settings = RoyaltySettings(instance_id=f"bench-{uuid.uuid4().hex[:6]}", group_id=f"bench-{uuid.uuid4().hex[:6]}",
                               batch_max=batch_max, transactional=transactional)
    processor = RoyaltyProcessor(kafka, settings, RateCard.load())
    processor.run(idle_exit_s=3)
    delete_prefixed_topics(kafka)
    stats = processor.stats
    assert stats.plays == plays, f"processed {stats.plays} of {plays}"
    assert stats.first_batch_at is not None and stats.last_batch_at is not None
    return plays / (stats.last_batch_at - stats.first_batch_at), sorted(stats.commit_ms), stats.transactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plays", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500, help="plays per transaction at most")
    args = parser.parse_args()
    base = KafkaSettings.from_env()
    eos, commits, transactions = run_mode(base, args.plays, True, args.batch)
    print(f"exactly-once: {eos:,.0f} plays/s over {transactions} transactions, "
          f"commit p50 {statistics.median(commits):.1f} ms", flush=True)
    alo, _, _ = run_mode(base, args.plays, False, args.batch)
    print(f"at-least-once: {alo:,.0f} plays/s", flush=True)
    p99 = commits[min(len(commits) - 1, int(0.99 * len(commits)))]
    print("RESULT " + json.dumps({
        "plays": args.plays, "batch_max": args.batch, "eos_plays_s": round(eos), "alo_plays_s": round(alo),
        "eos_overhead": round(1 - eos / alo, 3), "p99_commit_ms": round(p99, 1),
        "p50_commit_ms": round(statistics.median(commits), 1), "transactions": transactions,
    }))


if __name__ == "__main__":
    main()
