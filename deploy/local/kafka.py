"""Start, stop and check the local single-node Kafka (KRaft, broker+controller).

Usage: python deploy/local/kafka.py up|down|status

The jars come from Maven Central through deploy/kafka/pom.xml (cached in
~/.m2); the broker's data, logs, pid and class path live in .state/kafka.
``up`` is idempotent: a broker that already answers on the port is reused. If
KAFKA_BOOTSTRAP_SERVERS is set, nothing is started: that cluster is used.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import subprocess
import sys
import uuid

from confluent_kafka.admin import AdminClient
from processes import running_pid, stop, wait_until_ready
from tls import ensure_certificates

from kit.settings import REPO_ROOT, STATE_DIR, KafkaSettings

KAFKA_DIR = REPO_ROOT / "deploy" / "kafka"
STATE = STATE_DIR / "kafka"
PID_FILE = STATE / "kafka.pid"
TLS = STATE / "tls"
START_TIMEOUT_S = 90

SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners={listeners}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{scram_port},SASL_SSL://127.0.0.1:{sasl_ssl_port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
# SCRAM listeners, plain and over TLS, so clients' security settings are tested against a real
# broker (users are created through the admin API on the plaintext listener). The TLS listener's
# certificate comes from a local CA (deploy/local/tls.py; clients trust {tls}/ca.pem).
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location={tls}/broker.pem
# Kafka's authorizer: plaintext clients (the local services, tests) and the controller are
# ANONYMOUS, a super user; a SCRAM user may do only what ACLs grant (python -m kit.acls).
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
log.dirs={data}
num.partitions=3
offsets.topic.replication.factor=1
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=12
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.check.interval.ms=60000
"""


def log(msg: str) -> None:
    print(f"[kafka] {msg}", flush=True)


_QUIET = logging.getLogger("kafka-probe")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def broker_answers(settings: KafkaSettings, timeout_s: float = 3.0) -> bool:
    """True when the cluster answers a metadata request."""
    if settings.local_kafka:
        try:  # a refused TCP connect is the common case while starting: answer it quietly
            socket.create_connection(("127.0.0.1", settings.kafka_port), timeout=1).close()
        except OSError:
            return False
    try:
        AdminClient({**settings.client_config(), "logger": _QUIET}).list_topics(timeout=timeout_s)
        return True
    except Exception:
        return False


def class_path() -> str:
    """Resolve the broker's class path with Maven, cached until the POM changes."""
    pom = KAFKA_DIR / "pom.xml"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
    cached = STATE / f"classpath-{digest}.txt"
    if not cached.exists():
        log("resolving Kafka jars from Maven Central (first run only)...")
        subprocess.run(
            ["mvn", "-q", "-B", "-s", str(REPO_ROOT / "deploy" / "maven-settings.xml"), "-f", str(pom),
             "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:build-classpath",
             f"-Dmdep.outputFile={cached}"],
            check=True,
        )
    return cached.read_text().strip()


def java(cp: str, *args: str, heap: str = "512m") -> list[str]:
    return [
        "java", f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}", f"-Dkafka.logs.dir={STATE / 'logs'}",
        "-cp", cp, *args,
    ]


def up(settings: KafkaSettings) -> None:
    if not settings.local_kafka:
        log(f"KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers}: using that cluster, starting nothing")
        return
    if broker_answers(settings):
        log(f"broker already answering on {settings.bootstrap_servers}")
        return
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / "logs").mkdir(exist_ok=True)
    cp = class_path()
    data = STATE / "data"
    props = STATE / "server.properties"
    ensure_certificates(TLS)
    props.write_text(SERVER_PROPERTIES.format(
        port=settings.kafka_port, controller_port=settings.kafka_controller_port,
        scram_port=settings.kafka_scram_port, sasl_ssl_port=settings.kafka_sasl_ssl_port, data=data, tls=TLS,
        listeners=",".join([f"PLAINTEXT://127.0.0.1:{settings.kafka_port}",
                            f"CONTROLLER://127.0.0.1:{settings.kafka_controller_port}",
                            f"SASL_PLAINTEXT://127.0.0.1:{settings.kafka_scram_port}",
                            f"SASL_SSL://127.0.0.1:{settings.kafka_sasl_ssl_port}"])))
    if not (data / "meta.properties").exists():
        cluster_id = subprocess.run(java(cp, "kafka.tools.StorageTool", "random-uuid", heap="128m"),
                                    check=True, capture_output=True, text=True).stdout.strip() or str(uuid.uuid4())
        log(f"formatting storage (cluster {cluster_id})")
        subprocess.run(java(cp, "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id, "-c", str(props),
                            heap="128m"), check=True, stdout=subprocess.DEVNULL)
    with open(STATE / "logs" / "stdout.log", "ab") as out:
        proc = subprocess.Popen(java(cp, "kafka.Kafka", str(props)), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    PID_FILE.write_text(str(proc.pid))
    log(f"started broker pid {proc.pid} on {settings.bootstrap_servers}; waiting for it to answer")
    wait_until_ready(proc, lambda: broker_answers(settings, 2.0), START_TIMEOUT_S, "kafka", STATE / "logs")
    log("broker is up")


def down(settings: KafkaSettings) -> None:
    pid = stop(PID_FILE, grace_s=30)
    log(f"stopped broker pid {pid}" if pid else "no local broker running")


def status(settings: KafkaSettings) -> None:
    ok = broker_answers(settings)
    log(f"{settings.bootstrap_servers}: {'answering' if ok else 'not answering'}; local pid {running_pid(PID_FILE)}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    commands = {"up": up, "down": down, "status": status}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(commands)}")
    commands[sys.argv[1]](KafkaSettings.from_env())
