"""Crash test for royalty's exactly-once guarantee, on the real local broker.

Publishes a catalog and N plays (some short, fraud-flagged or repeated), runs
`python -m royalty` as separate processes — ``--instances`` of them in one consumer
group, each with its own transactional id, so kills also cause rebalances between
them — SIGKILLs a random instance at random moments and restarts it (a supervisor
also restarts any that exits on its own), and restarts the broker once. The kills
come at random points *of the processing* (shares of the plays in the committed
ledger), so every kill lands mid-stream. Then a read_committed consumer checks that
there is exactly one line per (play, payee, right type), each with the amount the
pure rules give, and that the totals match.

    python -m tests.chaos.royalty_crash --plays 100000 --kills 6 --instances 2    # make crash-royalty
Last line: RESULT {json}; exit status 1 on any violation.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from kit.serde import TopicSerde
from kit.settings import REPO_ROOT, STATE_DIR, KafkaSettings
from kit.topics import delete_prefixed_topics, ensure_topics
from royalty.history import PlayHistory
from royalty.rates import RateCard
from royalty.rules import Paid, Play, decide, position, remember
from royalty.tables import ReferenceTables
from tests.kafka_helpers import read_to_end
from tests.royalty_fixtures import Catalog

KAFKA_SCRIPT = REPO_ROOT / "deploy" / "local" / "kafka.py"
QUIET = logging.getLogger("crash-test-clients")  # connection errors while the broker restarts are expected
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False


def expected_lines(catalog: Catalog, kafka: KafkaSettings) -> dict[tuple[str, str, str], int]:
    """What the rules say each play pays, computed here from the same inputs: the plays as they
    sit on their topic (in partition order, with the positions that seed the rounding)."""
    tables = ReferenceTables()
    for topic, key, value in catalog.published:
        tables.apply(topic, key, value, 0)
    rates, history, out = RateCard.load(), PlayHistory(), {}
    serde = TopicSerde.for_topic("listener.plays.v1", kafka)
    for msg in read_to_end(kafka, serde.topic):
        value = serde.decode_value(msg.value())
        assert value is not None
        play = Play.from_record(value)
        decision = decide(play, rates, tables.works, tables.segments, tables.consent, history,
                          position(msg.partition(), msg.offset()))
        remember(history, play, decision, msg.partition())
        if isinstance(decision, Paid):
            for line in decision.lines:
                out[(play.play_id, line.rights_holder_id, line.right_type)] = line.amount_micros
    return out


def committed_lines(kafka: KafkaSettings, expected_count: int, timeout_s: float) -> list[dict[str, Any]]:
    serde = TopicSerde.for_topic("royalty.events.v1", kafka)
    consumer = Consumer({**kafka.client_config(), "group.id": f"verify-{uuid.uuid4().hex}",
                         "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([serde.topic])
    lines: list[dict[str, Any]] = []
    deadline, quiet_since = time.monotonic() + timeout_s, time.monotonic()
    while time.monotonic() < deadline:
        batch = consumer.consume(5000, 0.5)
        for msg in batch:
            if msg.error() is None:
                lines.append(serde.decode_value(msg.value()))
        quiet_since = time.monotonic() if batch else quiet_since
        if len(lines) >= expected_count and time.monotonic() - quiet_since > 3:
            break  # everything expected arrived and nothing more is coming (extra lines would be violations)
    consumer.close()
    return lines


class LedgerCounter:
    """Distinct play ids in the committed ledger, read incrementally (read_committed)."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.serde = TopicSerde.for_topic("royalty.play-ledger.v1", kafka)
        self.consumer = Consumer({**kafka.client_config(), "group.id": f"ledger-{uuid.uuid4().hex}",
                                  "isolation.level": "read_committed", "enable.auto.commit": False,
                                  "logger": QUIET})
        parts = self.consumer.list_topics(self.serde.topic, timeout=10).topics[self.serde.topic].partitions
        self.consumer.assign([TopicPartition(self.serde.topic, p, OFFSET_BEGINNING) for p in parts])
        self.play_ids: set[str] = set()

    def count(self) -> int:
        while True:
            batch = self.consumer.consume(5000, 0.2)
            for msg in batch:
                if msg.error() is None:
                    self.play_ids.add(self.serde.decode_key(msg.key())["play_id"])
            if not batch:
                return len(self.play_ids)

    def close(self) -> None:
        self.consumer.close()


class Supervisor:
    """Keeps one `python -m royalty` instance running; kill() SIGKILLs it."""

    def __init__(self, kafka: KafkaSettings, log_path: Path, instance: int = 0) -> None:
        self.env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "services"), "ENTRAIN_TOPIC_PREFIX": kafka.topic_prefix,
                    "ENTRAIN_ROYALTY_INSTANCE": f"crash-{instance}",
                    "ENTRAIN_ROYALTY_GROUP": f"royalty-{kafka.topic_prefix}",
                    "ENTRAIN_ROYALTY_METRICS_PORT": "0", "ENTRAIN_LOG_LEVEL": "WARNING"}
        self.log = open(log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = self.kills = self.exits = 0

    def ensure_running(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.proc is not None:
            self.exits += 1
        self.proc = subprocess.Popen([sys.executable, "-m", "royalty"], env=self.env, stdout=self.log,
                                     stderr=self.log, cwd=REPO_ROOT)
        self.starts += 1

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.kills += 1
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def restart_broker() -> float:
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "services")}
    subprocess.run([sys.executable, str(KAFKA_SCRIPT), "down"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, str(KAFKA_SCRIPT), "up"], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def run(plays_n: int, kills: int, broker_restart: bool, seed: int = 1, timeout_s: float = 600,
        instances: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    base = KafkaSettings.from_env()
    if broker_restart and not base.local_kafka:
        raise SystemExit("the broker restart needs the local broker (KAFKA_BOOTSTRAP_SERVERS is set)")
    kafka = replace(base, topic_prefix=f"crash-{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka)
    catalog = Catalog(kafka, works=20, segments=200, seed=seed)
    start = int(time.time() * 1000) - 3_600_000
    plays = catalog.plays(plays_n, start)
    for i in range(0, plays_n, 50):  # every 50th play is ineligible one way or another
        short = {**plays[i], "ms_played": 5_000, "completed": False}
        plays[i] = short if i % 100 else {**plays[i], "fraud_flags": ["burst_rate"]}
    repeats = [dict(plays[i]) for i in range(7, plays_n, 97)]  # repeated play ids, sent again later
    all_plays = plays + repeats
    catalog.send_plays(all_plays)
    del catalog.producer  # its reconnect attempts during the broker restart would only add noise
    expected = expected_lines(catalog, kafka)
    distinct_plays = len({p["play_id"] for p in all_plays})

    folder = STATE_DIR / "crash"
    folder.mkdir(parents=True, exist_ok=True)
    supervisors = [Supervisor(kafka, folder / f"royalty-{kafka.topic_prefix.rstrip('.')}-{n}.log", n)
                   for n in range(instances)]
    # Kill when a random share of the plays is ledgered: every kill lands while plays are in flight.
    kill_at = sorted(rng.uniform(0.05, 0.8) for _ in range(kills))
    restart_after = kills // 2 if broker_restart else None
    began = time.monotonic()
    broker_restart_s = 0.0
    ledger = LedgerCounter(kafka)

    def ensure_running() -> None:
        for supervisor in supervisors:
            supervisor.ensure_running()

    ensure_running()
    try:
        for n, share in enumerate(kill_at):
            while ledger.count() < share * distinct_plays and time.monotonic() - began < timeout_s:
                ensure_running()
                time.sleep(0.05)
            victim = rng.randrange(instances)
            supervisors[victim].kill()
            print(f"killed royalty instance {victim} ({n + 1}/{kills}) at {time.monotonic() - began:.1f}s; "
                  f"ledger {ledger.count()}/{distinct_plays}", flush=True)
            if restart_after is not None and n == restart_after:
                broker_restart_s = restart_broker()
                print(f"restarted the broker in {broker_restart_s:.1f}s", flush=True)
            ensure_running()
        while ledger.count() < distinct_plays and time.monotonic() - began < timeout_s:
            ensure_running()
            time.sleep(1)
    finally:
        for supervisor in supervisors:
            supervisor.stop()
        ledger.close()
    elapsed = time.monotonic() - began

    lines = committed_lines(kafka, len(expected), timeout_s=120)
    seen = Counter((x["play_id"], x["rights_holder_id"], x["right_type"]) for x in lines)
    doubled = sum(1 for c in seen.values() if c > 1)
    missing = sum(1 for k in expected if k not in seen)
    unexpected = sum(1 for k in seen if k not in expected)
    wrong_amount = sum(1 for x in lines if expected.get((x["play_id"], x["rights_holder_id"], x["right_type"]))
                       not in (None, x["amount_micros"]))
    delete_prefixed_topics(kafka)
    total_expected, total_seen = sum(expected.values()), sum(x["amount_micros"] for x in lines)
    violations = doubled + missing + unexpected + wrong_amount + (total_expected != total_seen)
    return {
        "plays": len(all_plays), "distinct_plays": distinct_plays, "expected_lines": len(expected),
        "committed_lines": len(lines), "doubled": doubled, "missing": missing, "unexpected": unexpected,
        "wrong_amount": wrong_amount, "expected_total_micros": total_expected, "committed_total_micros": total_seen,
        "instances": instances, "kills": sum(s.kills for s in supervisors),
        "starts": sum(s.starts for s in supervisors), "unplanned_exits": sum(s.exits for s in supervisors),
        "broker_restarts": int(broker_restart), "broker_restart_s": round(broker_restart_s, 1),
        "seconds": round(elapsed, 1), "violations": violations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plays", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--no-broker-restart", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--instances", type=int, default=2, help="royalty processes in one consumer group")
    args = parser.parse_args()
    result = run(args.plays, args.kills, not args.no_broker_restart, args.seed, instances=args.instances)
    print("RESULT " + json.dumps(result))
    sys.exit(1 if result["violations"] else 0)


if __name__ == "__main__":
    main()
