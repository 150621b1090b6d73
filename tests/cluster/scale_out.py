"""make test-cluster: every service scaled out on a three-broker cluster, a broker killed, one
instance of every service killed, a third soundtrack worker added; then what listeners and
finance see.

On the local three-node cluster (deploy/local/cluster.py: RF 3, min ISR 2) and the schema
registry, on a private topic prefix:

* two instances of ingest, the soundtrack worker, delivery, inference, watermark and royalty
  (one group per service, static members), and the retrainer; the driver spreads its requests
  over both ingest and both delivery instances, as a load balancer would;
* ``--listeners`` simulated listeners send 1 Hz telemetry through ingest, ``--generating`` of
  them with their player on; plays for every heard segment; consent flips;
* a warm-up (``--warmup`` s, default 30) with the generating listeners' sessions already playing,
  so that the first requests to cold processes (model and SoundFont loads, first connections) are
  not taken for scale-out effects; its underruns are reported as ``underruns_during_warmup``;
* faults, one at a time: SIGKILL of one broker (restarted ``--broker-down`` seconds later), then
  SIGKILL of one instance of every service (each restarted at once, as an orchestrator would),
  then a third soundtrack worker joins mid-run.

Checks (from the topics and the services' answers):

  acked_events / lost_events     telemetry and plays ingest acknowledged vs. what is on the topics
  royalty_lines_missing/_duplicated   the royalty lines the pure rules give for the acknowledged
                                 plays vs. the committed lines (chaos's check_royalty)
  segments_unverified            segments in the playlists that the detection API does not
                                 verify as themselves (and with the shared provenance registry,
                                 the other watermark instance's segments too)
  underruns                      requests whose segment was not on soundtrack.segments.v1 by its
                                 deadline; ``underruns_outside_fault_windows`` are those not within
                                 the window of a fault that can delay a segment: the broker, a
                                 soundtrack worker, inference or watermark (from the fault until 15 s
                                 after the service or cluster answered again). Ingest, delivery and
                                 royalty kills excuse nothing.
  rebalances                     partition assignments logged by the services' consumers

Last line: RESULT {json}; exit status 1 if a loss, duplicate or unexcused underrun was found.

    python -m tests.cluster.scale_out [--listeners 30] [--generating 4] [--seconds 180]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

from kit.settings import REPO_ROOT, STATE_DIR, KafkaSettings
from kit.topics import cluster_size, delete_prefixed_topics, ensure_topics
from tests.chaos.pipeline_chaos import (
    Driver,
    Fault,
    Listener,
    check_ingested,
    check_royalty,
    check_watermarks,
    drive,
    driver_listener_id,
    late_segments,
)
from tests.pipeline import Pipeline

CLUSTER = REPO_ROOT / "deploy" / "local" / "cluster.py"
SCALED = ("ingest", "soundtrack", "delivery", "inference", "watermark", "royalty")
MUSIC_PATH = ("broker", "soundtrack", "inference", "watermark")  # faults that can make a segment late
WINDOW_AFTER_S = 15.0


def cluster(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "services")}
    return subprocess.run([sys.executable, str(CLUSTER), *args], check=True, env=env, capture_output=True,
                          text=True).stdout.strip()


def cluster_settings() -> KafkaSettings:
    return KafkaSettings.from_env({**os.environ, "KAFKA_BOOTSTRAP_SERVERS": cluster("bootstrap")})


def run_faults(pipe: Pipeline, plan: list[tuple[float, str]], began: float, broker_down_s: float,
               faults: list[Fault], stop: threading.Event) -> None:
    for at, what in plan:
        while time.time() - began < at:
            if stop.wait(0.2):
                return
        fault = Fault(what, time.time())
        faults.append(fault)
        if what == "broker":
            cluster("kill", "2")
            stop.wait(broker_down_s)
            cluster("start", "2")
            names = [n for n in pipe.procs]
        elif what == "soundtrack+":
            names = [pipe.add_instance("soundtrack")]
        else:
            victim = pipe.instances(what)[-1]  # the second instance; the first keeps serving
            pipe.kill(victim)
            names = [victim]
        deadline = time.monotonic() + 180
        while not all(pipe.ready(n) for n in names) and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.3)
        if what == "broker":  # and all three brokers back in the cluster
            while cluster_size(pipe.kafka, 5) < 3 and time.monotonic() < deadline and not stop.is_set():
                time.sleep(0.5)
        fault.over = time.time()
        print(f"  fault: {what:11s} at {fault.started - began:5.1f}s, recovered in "
              f"{fault.over - fault.started:5.1f}s", flush=True)


def rebalances(pipe: Pipeline) -> int:
    """Partition assignments the services logged (kit consumers and the Faust workers)."""
    pattern = re.compile(rb"partitions_assigned|Assigned partitions|Elected group leader|rebalance", re.I)
    return sum(len(pattern.findall((pipe.workdir / f"{name}.log").read_bytes())) for name in pipe.procs
               if (pipe.workdir / f"{name}.log").exists())


def outside_windows(faults: list[Fault], late: list[tuple[float, bool, int | None]]) -> int:
    """Late segments not within the window of a fault that can delay one."""
    windows = [(f.started - 1, (f.over or f.started + 120) + WINDOW_AFTER_S) for f in faults
               if f.what.rstrip("+") in MUSIC_PATH]
    return sum(1 for at, _, _ in late if not any(lo <= at <= hi for lo, hi in windows))


def run(listeners_n: int, generating: int, seconds: float, broker_down_s: float, seed: int = 1,
        warmup_s: float = 30.0, keep_topics: bool = False) -> dict[str, Any]:
    cluster("up")
    base = cluster_settings()
    kafka = replace(base, topic_prefix=f"scale-{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka)
    workdir = STATE_DIR / "scale-out" / kafka.topic_prefix.rstrip(".")
    pipe = Pipeline(kafka, workdir, royalty=True, replicas=dict.fromkeys(SCALED, 2)).start(timeout_s=300)
    rng = random.Random(seed)
    run_id = uuid.uuid4().hex[:6]
    listeners = [Listener(i, False, f"scale-{run_id}-{i:04d}", rng.uniform(0, 80)) for i in range(listeners_n)]
    driver = Driver(pipe, listeners, seed)
    faults: list[Fault] = []
    stop = threading.Event()
    result: dict[str, Any] = {"listeners": listeners_n, "generating": generating, "seconds": seconds,
                              "warmup_s": warmup_s,
                              "brokers": 3, "instances": {s: len(pipe.instances(s)) for s in SCALED}}
    try:
        driver.seed_consent()
        kills = list(SCALED)
        rng.shuffle(kills)
        kinds = ["broker", *kills, "soundtrack+"]
        span = (0.15 * seconds, 0.8 * seconds)
        plan = [(span[0] + i * (span[1] - span[0]) / (len(kinds) - 1), k) for i, k in enumerate(kinds)]
        drive(pipe, driver, generating, time.time(), warmup_s, report=False)
        began = time.time()
        fault_thread = threading.Thread(target=run_faults, args=(pipe, plan, began, broker_down_s, faults, stop),
                                        daemon=True)
        fault_thread.start()
        drive(pipe, driver, generating, began, seconds, consent_every_s=30)
        fault_thread.join(300)
        driver.flush(timeout_s=60)
        load_over_ms = int(time.time() * 1000)
        print("load over; checking", flush=True)
        result["faults"] = [{"what": f.what, "at_s": round(f.started - began, 1),
                             "recovered_s": round(f.over - f.started, 1)} for f in faults]
        ingested = check_ingested(kafka, driver.acked)
        royalty = check_royalty(kafka, driver.acked, int(began * 1000), timeout_s=300)
        watermarks = check_watermarks(pipe, listeners)
        listener_ids = {driver_listener_id(pipe, lt) for lt in listeners if lt.music}
        excused: dict[str, int] = {}
        due, late = late_segments(kafka, listener_ids, load_over_ms - 5000, excused)
        warm = [item for item in late if item[0] < began]
        late = [item for item in late if item[0] >= began]
        per_10s: dict[int, int] = {}
        for at, _, _ in late:
            per_10s[int((at - began) // 10) * 10] = per_10s.get(int((at - began) // 10) * 10, 0) + 1
        result |= {
            "acked_events": ingested["telemetry_acked"] + ingested["plays_acked"],
            "lost_events": ingested["telemetry_lost"] + ingested["plays_lost"],
            "royalty_lines_expected": royalty["expected_lines"], "royalty_lines_committed": royalty["committed_lines"],
            "royalty_lines_missing": royalty["lines_missing"], "royalty_lines_duplicated": royalty["lines_doubled"],
            "royalty_lines_unexpected": royalty["lines_unexpected"],
            "royalty_lines_wrong_amount": royalty["lines_wrong_amount"],
            "plays_unledgered": royalty["plays_unledgered"], "ledger_doubled": royalty["ledger_doubled"],
            "reconciled": royalty["reconciled"],
            "segments_checked": watermarks["segments_checked"], "segments_unverified": watermarks["segments_failed"],
            "requests_due": due, "positions_refused_at_capacity": excused["refused"],
            "positions_before_session_start": excused["before_start"],
            "underruns_during_warmup": len(warm), "underruns": len(late),
            "underruns_never_made": sum(1 for _, m, _ in late if m),
            "underruns_outside_fault_windows": outside_windows(faults, late),
            "underruns_by_10s": dict(sorted(per_10s.items())),
            "rebalances": rebalances(pipe), "broker_kills": sum(1 for f in faults if f.what == "broker"),
            "service_kills": sum(1 for f in faults if f.what in SCALED),
            "workers_added": sum(1 for f in faults if f.what == "soundtrack+"),
            "unplanned_exits": dict(pipe.exits), "http_retries": driver.acked.retries,
        }
        pipe.supervise()
        result["services_down_at_end"] = [n for n in pipe.procs if not pipe.ready(n)]
    finally:
        stop.set()
        pipe.stop()
        shutil.rmtree(workdir / "segments", ignore_errors=True)  # the logs stay for a look
    if not keep_topics:
        delete_prefixed_topics(kafka)
    result["violations"] = violations(result)
    return result


MUST_BE_ZERO = ("lost_events", "royalty_lines_missing", "royalty_lines_duplicated", "royalty_lines_unexpected",
                "royalty_lines_wrong_amount", "plays_unledgered", "ledger_doubled", "segments_unverified",
                "underruns_outside_fault_windows")


def violations(r: dict[str, Any]) -> int:
    """Failed checks, plus checks with nothing to check (they could not have failed)."""
    empty = [k for k in ("acked_events", "royalty_lines_committed", "segments_checked", "requests_due",
                         "broker_kills", "service_kills", "workers_added") if not r.get(k)]
    r["empty_checks"] = empty
    return (len(empty) + sum(abs(int(r.get(k, 1))) for k in MUST_BE_ZERO) + (not r.get("reconciled", False))
            + len(r.get("services_down_at_end", ["?"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listeners", type=int, default=30)
    parser.add_argument("--generating", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--broker-down", type=float, default=20, help="seconds the killed broker stays down")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=30, help="seconds of load before the measured run")
    parser.add_argument("--keep-topics", action="store_true", help="leave the run's topics for a look")
    args = parser.parse_args()
    result = run(args.listeners, args.generating, args.seconds, args.broker_down, args.seed, args.warmup,
                 args.keep_topics)
    print(f"violations: {result['violations']}")
    print("RESULT " + json.dumps(result))
    sys.exit(1 if result["violations"] else 0)


if __name__ == "__main__":
    main()
