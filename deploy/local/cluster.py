"""A local three-node Kafka cluster: KRaft, each node broker+controller, a three-voter quorum.

Usage: python deploy/local/cluster.py up|down|status|bootstrap|kill N|start N

The same jars as the single local broker (deploy/kafka/pom.xml). Node N (1..3) serves clients on
127.0.0.1:$ENTRAIN_CLUSTER_PORT+2(N-1) (default 29092, 29094, 29096) and its controller on the
next port. Replication factor 3 and min.insync.replicas 2 are the cluster's defaults, for
every topic and for the offsets and transaction logs: one node can be lost without losing an
acknowledged write or stopping producers. Data lives in .state/cluster/node-N.

Memory: 320 MB heap per node (ENTRAIN_CLUSTER_HEAP), about 1.5 GB resident for the three,
with network and I/O threads sized for a two-core machine.

``kill N`` SIGKILLs node N (a crash, not a shutdown); ``start N`` starts it again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import processes
from kafka import broker_answers, class_path, java

from kit.settings import STATE_DIR, KafkaSettings

STATE = STATE_DIR / "cluster"
NODES = (1, 2, 3)
BASE_PORT = int(os.environ.get("ENTRAIN_CLUSTER_PORT", "29092"))
HEAP = os.environ.get("ENTRAIN_CLUSTER_HEAP", "320m")
CLUSTER_ID = "ZW50cmFpbi1jbHVzdGVyAA"  # fixed: the three nodes must agree; a fresh .state/cluster is a fresh cluster
START_TIMEOUT_S = 120

NODE_PROPERTIES = """\
process.roles=broker,controller
node.id={node}
controller.quorum.voters={voters}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=3
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=12
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
num.network.threads=2
num.io.threads=2
num.replica.fetchers=1
log.cleaner.threads=1
background.threads=2
log.retention.check.interval.ms=60000
"""


def log(msg: str) -> None:
    print(f"[cluster] {msg}", flush=True)


def port(node: int) -> int:
    return BASE_PORT + 2 * (node - 1)


def bootstrap() -> str:
    return ",".join(f"127.0.0.1:{port(n)}" for n in NODES)


def settings() -> KafkaSettings:
    """Client settings for the cluster (the registry stays whatever the environment says)."""
    return KafkaSettings.from_env({**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap()})


def pid_file(node: int) -> Path:
    return STATE / f"node-{node}.pid"


def running_pid(node: int) -> int | None:
    return processes.running_pid(pid_file(node))


def _prepare(node: int, cp: str) -> Path:
    folder = STATE / f"node-{node}"
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    props = folder / "server.properties"
    voters = ",".join(f"{n}@127.0.0.1:{port(n) + 1}" for n in NODES)
    props.write_text(NODE_PROPERTIES.format(node=node, voters=voters, port=port(node), controller_port=port(node) + 1,
                                            data=folder / "data"))
    if not (folder / "data" / "meta.properties").exists():
        subprocess.run(java(cp, "kafka.tools.StorageTool", "format", "-t", CLUSTER_ID, "-c", str(props),
                            heap="128m"), check=True, stdout=subprocess.DEVNULL)
    return props


def start(node: int) -> None:
    if running_pid(node):
        log(f"node {node} already running (pid {running_pid(node)})")
        return
    cp = class_path()
    props = _prepare(node, cp)
    folder = props.parent
    command = java(cp, "kafka.Kafka", str(props), heap=HEAP)
    command = [c.replace(f"-Dkafka.logs.dir={STATE_DIR / 'kafka' / 'logs'}", f"-Dkafka.logs.dir={folder / 'logs'}")
               for c in command]
    with open(folder / "logs" / "stdout.log", "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    pid_file(node).write_text(str(proc.pid))
    log(f"node {node} started, pid {proc.pid}, on 127.0.0.1:{port(node)}")


def up() -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    for node in NODES:
        start(node)
    cluster = settings()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        dead = [n for n in NODES if running_pid(n) is None]
        if dead:
            sys.exit(f"[cluster] node(s) {dead} exited; see {STATE}/node-N/logs")
        if broker_answers(cluster, 2.0) and _brokers(cluster) == len(NODES):
            log(f"three brokers answering on {bootstrap()}")
            return
        time.sleep(0.5)
    sys.exit(f"[cluster] not all three brokers answered within {START_TIMEOUT_S}s; see {STATE}/node-N/logs")


def _brokers(cluster: KafkaSettings) -> int:
    from kit.topics import cluster_size

    try:
        return cluster_size(cluster, timeout_s=3)
    except Exception:
        return 0


def kill(node: int) -> None:
    pid = running_pid(node)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        while running_pid(node) is not None:
            time.sleep(0.05)
    pid_file(node).unlink(missing_ok=True)
    log(f"node {node} killed (pid {pid})")


def stop(node: int) -> None:
    pid = processes.stop(pid_file(node), grace_s=30)
    if pid:
        log(f"node {node} stopped (pid {pid})")


def down() -> None:
    for node in NODES:
        stop(node)


def status() -> None:
    answering = broker_answers(settings())
    log(f"{bootstrap()}: {'answering' if answering else 'not answering'}, "
        f"{_brokers(settings()) if answering else 0} brokers; "
        + ", ".join(f"node {n}: pid {running_pid(n)}, {processes.resident_mb(running_pid(n))} MB resident"
                    for n in NODES))
    sys.exit(0 if answering else 1)


if __name__ == "__main__":
    args = sys.argv[1:]
    simple = {"up": up, "down": down, "status": status, "bootstrap": lambda: print(bootstrap())}
    if len(args) == 1 and args[0] in simple:
        simple[args[0]]()
    elif len(args) == 2 and args[0] in ("kill", "start") and args[1] in {str(n) for n in NODES}:
        (kill if args[0] == "kill" else start)(int(args[1]))
    else:
        sys.exit(f"usage: {sys.argv[0]} up|down|status|bootstrap|kill N|start N")
