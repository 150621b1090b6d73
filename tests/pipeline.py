"""The whole pipeline as processes on a private topic prefix and private ports, for end-to-end
tests, benchmarks and the chaos run: ingest, soundtrack (worker + delivery), inference,
watermark and, when asked, royalty.

It never touches a stack started by ``make up``: topics carry the prefix, the Faust app id and
data dir are its own, and every port is picked free.

``replicas`` runs more than one instance of a service (the scale-out run): the first keeps the
service's name, the others are ``<service>-2``, ``<service>-3``, ... each with its own ports,
static group member id, data dir and (royalty) transactional id; ``ingest_url`` and
``delivery_url`` take turns among a service's instances, as a load balancer would.

``s3=True`` keeps the segments in the S3-compatible server (``s3_env``: the one ``make s3-up``
starts, or the one ``AWS_ENDPOINT_URL`` names) under a prefix of its own, not on the filesystem.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kit.auth import hash_key
from kit.settings import REPO_ROOT, STATE_DIR, KafkaSettings
from kit.tokens import generate_key_set


def s3_env(prefix: str) -> dict[str, str]:
    """The environment of a segment store in the test S3 server under ``prefix``: the server
    ``AWS_ENDPOINT_URL`` names (bucket ENTRAIN_TEST_S3_BUCKET), else the local s3proxy."""
    if os.environ.get("AWS_ENDPOINT_URL"):
        bucket = os.environ.get("ENTRAIN_TEST_S3_BUCKET", "entrain-segments")
        return {"ENTRAIN_SEGMENT_STORE": f"s3://{bucket}/{prefix}"}
    sys.path.insert(0, str(REPO_ROOT / "deploy" / "local"))
    import s3  # deploy/local/s3.py

    if not s3.ready():
        raise RuntimeError("no S3-compatible server on 127.0.0.1: run `make s3-up` (`make test` does)")
    return s3.local_env(prefix=prefix)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pipeline:
    kafka: KafkaSettings
    workdir: Path
    app_key: str = field(default_factory=lambda: "test-app-" + secrets.token_hex(16))
    admin_key: str = field(default_factory=lambda: "test-admin-" + secrets.token_hex(16))
    royalty: bool = False
    replicas: dict[str, int] = field(default_factory=dict)  # service -> instances (default 1)
    s3: bool = False  # the segment store: the S3 server (True) or a directory in workdir
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    exits: dict[str, int] = field(default_factory=dict)  # exits nobody asked for, per service
    _lock: threading.Lock = field(default_factory=threading.Lock)  # kill() and supervise() run in two threads
    _tokens: dict[tuple[str, str, str], tuple[str, int]] = field(default_factory=dict)
    _turn: int = 0

    @property
    def ingest_url(self) -> str:
        return self._url_of("ingest")

    @property
    def delivery_url(self) -> str:
        return self._url_of("delivery")

    def _url_of(self, service: str) -> str:
        names = self.instances(service)
        self._turn += 1
        return f"http://127.0.0.1:{self.ports[names[self._turn % len(names)]]}"

    def instances(self, service: str) -> list[str]:
        """The process names of a service's instances, in start order."""
        return [n for n in self.ports if self.service_of(n) == service and n != "detect"]

    @staticmethod
    def service_of(name: str) -> str:
        base, _, n = name.rpartition("-")
        return base if n.isdigit() else name

    def env(self, name: str | None = None) -> dict[str, str]:
        keys = self.workdir / "api-keys.json"
        keys.write_text(json.dumps([{"key_id": "test-app", "sha256": hash_key(self.app_key),
                                     "scopes": ["listener-app"]},
                                    {"key_id": "test-admin", "sha256": hash_key(self.admin_key),
                                     "scopes": ["admin"]}]))
        secret = self.workdir / "pseudonym.secret"
        if not secret.exists():
            secret.write_text(secrets.token_hex(32))
        signing, public = self.workdir / "token-signing.jwks", self.workdir / "token-public.jwks"
        if not signing.exists():  # kept across restarts: tokens minted before must still verify
            private_set, public_set = generate_key_set("lt-test")
            signing.write_text(json.dumps(private_set))
            public.write_text(json.dumps(public_set))
        wm_keys = self.workdir / "watermark-keys.json"
        if not wm_keys.exists():  # kept across restarts: segments marked before must still verify
            wm_keys.write_text(json.dumps({"active": "wk-test", "keys": {"wk-test": secrets.token_hex(32)}}))
        return {
            **os.environ, "PYTHONPATH": str(REPO_ROOT / "services"), "ENTRAIN_TOPIC_PREFIX": self.kafka.topic_prefix,
            "ENTRAIN_API_KEYS_FILE": str(keys), "ENTRAIN_PSEUDONYM_SECRET_FILE": str(secret),
            "ENTRAIN_TOKEN_SIGNING_KEYS_FILE": str(signing), "ENTRAIN_TOKEN_PUBLIC_KEYS_FILE": str(public),
            "ENTRAIN_WATERMARK_KEYS_FILE": str(wm_keys),
            **(s3_env(self.kafka.topic_prefix.strip(".") or "pipeline") if self.s3
               else {"ENTRAIN_SEGMENT_STORE": str(self.workdir / "segments")}),
            "ENTRAIN_SOUNDTRACK_DATADIR": str(self.workdir / "faust"),
            "ENTRAIN_INGEST_PORT": str(self.ports["ingest"]), "ENTRAIN_DELIVERY_PORT": str(self.ports["delivery"]),
            "ENTRAIN_INGEST_CORS_ORIGINS": ",".join(f"http://127.0.0.1:{self.ports[n]}"
                                                    for n in self.instances("delivery")),
            "ENTRAIN_SOUNDTRACK_METRICS_PORT": str(self.ports["soundtrack"]),
            "ENTRAIN_INFERENCE_METRICS_PORT": str(self.ports["inference"]),
            "ENTRAIN_RETRAINER_METRICS_PORT": str(self.ports["retrainer"]),
            "ENTRAIN_WATERMARK_METRICS_PORT": str(self.ports["watermark"]),
            "ENTRAIN_WATERMARK_DETECT_PORT": str(self.ports["detect"]),
            "ENTRAIN_DELIVERY_LOOKBACK_S": "600",
            "ENTRAIN_WATERMARK_DETECTIONS_PER_S": "1000",  # end-to-end checks verify every segment
            "ENTRAIN_INSTANCE_ID": "0",  # one process per service: static group members, restarts rejoin at once
            "ENTRAIN_ROYALTY_METRICS_PORT": str(self.ports["royalty"]),
            "ENTRAIN_ROYALTY_INSTANCE": "pipeline-0",
        } | ({} if self.kafka.local_kafka else {"KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers}) | (
            self._instance_env(name) if name else {})

    def _instance_env(self, name: str) -> dict[str, str]:
        """What differs between instances of one service: ports, member id, data dir, transactional id."""
        service, n = self.service_of(name), (name.rpartition("-")[2] if name != self.service_of(name) else "1")
        if n == "1":
            return {}
        port = str(self.ports[name])
        own = {"ingest": {"ENTRAIN_INGEST_PORT": port}, "delivery": {"ENTRAIN_DELIVERY_PORT": port},
               "soundtrack": {"ENTRAIN_SOUNDTRACK_DATADIR": str(self.workdir / f"faust-{n}")},
               "royalty": {"ENTRAIN_ROYALTY_INSTANCE": f"pipeline-{n}"}}.get(service, {})
        if service == "watermark":
            own["ENTRAIN_WATERMARK_DETECT_PORT"] = str(self.ports[f"detect-{n}"])
        if service not in ("ingest", "delivery"):
            own[f"ENTRAIN_{service.upper()}_METRICS_PORT"] = port
        return own | {"ENTRAIN_INSTANCE_ID": str(int(n) - 1)}

    @property
    def modules(self) -> dict[str, str]:
        modules = {"ingest": "ingest", "soundtrack": "soundtrack", "inference": "inference",
                   "retrainer": "inference.retrainer",
                   "watermark": "watermark", "delivery": "delivery"}
        return {**modules, "royalty": "royalty"} if self.royalty else modules

    def start(self, timeout_s: float = 120) -> Pipeline:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port() for name in
                      ("ingest", "delivery", "soundtrack", "inference", "retrainer", "watermark", "detect", "royalty")}
        for service in self.modules:
            for _ in range(self.replicas.get(service, 1) - 1):
                self._allot(service)
        names = [n for n in self.ports if n != "detect" and not n.startswith("detect-")
                 and self.service_of(n) in self.modules]
        for name in names:
            self.launch(name)
        self.wait_ready(names, timeout_s)
        self.seed_consent()
        return self

    def _allot(self, service: str) -> str:
        """Ports for one more instance of a service; its process name."""
        name = f"{service}-{len(self.instances(service)) + 1}"
        self.ports[name] = free_port()
        if service == "watermark":
            self.ports[f"detect-{name.rpartition('-')[2]}"] = free_port()
        return name

    def add_instance(self, service: str, timeout_s: float = 120) -> str:
        """Start one more instance of a running service (scale-out); return its name once ready."""
        with self._lock:
            name = self._allot(service)
            self.launch(name)
        self.wait_ready([name], timeout_s)
        return name

    def seed_consent(self) -> None:
        """The demo rights holders' consent as the model's snapshot recorded it, through ingest's
        admin API (consent is opt-in: without records nothing may be generated or paid)."""
        from inference.catalog import ConsentSnapshot, load_catalog

        snapshot = ConsentSnapshot.load()
        for holder in sorted({h for w in load_catalog() for h in w.rights_holders}):
            request = urllib.request.Request(
                f"{self.ingest_url}/v1/rights-holders/{holder}/consent", method="PUT",
                data=json.dumps(snapshot.consent_body(holder)).encode(),
                headers={"Authorization": f"Bearer {self.admin_key}", "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=15) as response:
                assert response.status == 202

    def launch(self, name: str) -> None:
        with open(self.workdir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", self.modules[self.service_of(name)]],
                                                env=self.env(name),
                                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)

    def pids(self) -> dict[str, int]:
        """Every running service's process, and the local broker's if it runs here."""
        broker = STATE_DIR / "kafka" / "kafka.pid"
        return {name: p.pid for name, p in self.procs.items()} | (
            {"broker": int(broker.read_text())} if broker.exists() else {})

    def ready(self, name: str) -> bool:
        return _ready(f"http://127.0.0.1:{self.ports[name]}/readyz")

    def wait_ready(self, names: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for name in names:
            while not self.ready(name):
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited: {self.log(name)[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready in {timeout_s}s: {self.log(name)[-2000:]}")
                time.sleep(0.3)

    def kill(self, name: str) -> None:
        """SIGKILL one service (no clean shutdown) and start it again at once."""
        with self._lock:
            self.procs[name].send_signal(signal.SIGKILL)
            self.procs[name].wait()
            self.launch(name)

    def supervise(self) -> list[str]:
        """Restart services that exited on their own (as an orchestrator would); return their names."""
        with self._lock:
            restarted = [name for name, proc in self.procs.items() if proc.poll() is not None]
            for name in restarted:
                self.exits[name] = self.exits.get(name, 0) + 1
                self.launch(name)
        return restarted

    def token(self, user_id: str, tier: str = "PREMIUM", territory: str = "DE") -> str:
        """A listener token, minted the way an app backend does (POST /v1/tokens with the app key);
        cached until ten minutes before it expires."""
        cached = self._tokens.get((user_id, tier, territory))
        if cached is not None and cached[1] - 600 > time.time():
            return cached[0]
        answer = mint_token(self.ingest_url, self.app_key, user_id, tier, territory)
        self._tokens[(user_id, tier, territory)] = (answer["token"], answer["expires_at"])
        return str(answer["token"])

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def mint_token(ingest_url: str, app_key: str, user_id: str, tier: str = "PREMIUM", territory: str = "DE",
               attempts: int = 20) -> dict[str, object]:
    """POST /v1/tokens as an app backend would; retried while ingest restarts or sheds load."""
    body = json.dumps({"user_id": user_id, "subscription_tier": tier, "territory": territory}).encode()
    for attempt in range(attempts):
        request = urllib.request.Request(f"{ingest_url}/v1/tokens", data=body, method="POST", headers={
            "Authorization": f"Bearer {app_key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            if exc.code not in (429, 503) or attempt == attempts - 1:
                raise
        except OSError:
            if attempt == attempts - 1:
                raise
        time.sleep(0.5)
    raise RuntimeError("unreachable")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the processes used so far, from /proc."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it exited; its share is lost, which only makes the estimate conservative
        total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")
