"""make chaos: the whole pipeline under steady load, faults and hostile input; then its invariants.

On the local broker, on a private topic prefix, it runs every service (ingest, soundtrack worker
and delivery, inference, watermark, royalty) as its own process and for ``--seconds``:

* sends 1 Hz telemetry for ``--listeners`` simulated listeners through ingest; ``--generating`` of
  them have their player on (``music: true``), so segments are generated for them: by default
  half of the capacity measured at start-up (generation plus watermarking, on this machine);
* posts a play through ingest for every segment a listener heard (some too short to pay, some
  catalog works), and flips rights holders' AI-generation consent every ~20 s;
* SIGKILLs each service once and starts it again, restarts the broker once, and injects bad
  records (malformed bytes, another topic's schema, out-of-range values, a 600 KB payload) on
  every input topic and bad requests on every HTTP endpoint;
* restarts any service that exits on its own (as an orchestrator would) and counts it.

Then it checks, from what is on the topics and what the services answer:

  telemetry / plays   every event ingest acknowledged is on its topic
  royalty             every acknowledged play has exactly one ledger entry; every paid play has
                      exactly the lines the pure rules give (none missing, doubled or different),
                      and the statements reconcile to the micro-unit
  watermark           every segment in every playlist verifies (detection API) as itself
  dlq                 every injected bad record is in its topic's DLQ with a reason, and nothing
                      else is there
  http                every bad request got a 4xx with a JSON reason and no stack trace
  services            every service is up and ready at the end
  underruns           segments late for their deadline (or never made) happen only within a
                      recovery window after a fault; the counts near the broker restart, near the
                      service kills and elsewhere are reported (elsewhere is a violation)
  secrets             no service log line and no record on any topic holds an app user id, an API
                      key, the pseudonymisation secret or a watermark key

Last line: RESULT {json} with every count and ``violations``; exit status 1 if any.

    python -m tests.chaos.pipeline_chaos [--listeners 200] [--seconds 360]      (make chaos)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from http.client import HTTPConnection
from typing import Any
from urllib.parse import urlsplit

from confluent_kafka import Producer as RawProducer

from inference.catalog import ConsentSnapshot, load_catalog
from kit.auth import Pseudonymizer, listener_play_id
from kit.serde import TopicSerde
from kit.settings import STATE_DIR, KafkaSettings
from kit.topics import delete_prefixed_topics, ensure_topics
from royalty.history import PlayHistory
from royalty.rates import RateCard, RateCardMissing
from royalty.rules import Paid, Play, decide, position, remember
from royalty.statement import build
from royalty.tables import CONSENT, ERASURES, SEGMENTS, WORKS, ReferenceTables
from soundtrack.schedule import segment_id
from tests.chaos.royalty_crash import QUIET, restart_broker
from tests.kafka_helpers import read_to_end
from tests.pipeline import Pipeline, cpu_seconds

SERVICES = ("ingest", "soundtrack", "delivery", "inference", "watermark", "royalty")
RECOVERY_S = 20.0  # after a fault is over (service ready again, broker answering), lateness still counts as its
INPUT_TOPICS = ("listener.telemetry.v1", "listener.plays.v1", "listener.erasures.v1", "catalog.consent.v1",
                "catalog.works.v1", "soundtrack.requests.v1", "soundtrack.segments.generated.v1",
                "soundtrack.segments.v1")


# --- HTTP --------------------------------------------------------------------------------

def http(method: str, url: str, key: str | None = None, body: Any = None, raw: bytes | None = None,
         timeout: float = 15) -> tuple[int, bytes]:
    """(status, body); status 0 when the server could not be reached."""
    data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, TimeoutError):
        return 0, b""


# --- capacity ----------------------------------------------------------------------------

class CpuMeter:
    """Whole-pipeline CPU rate: every service, the broker and this driver (all on this machine)."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe

    def pids(self) -> list[int]:
        return list(self.pipe.pids().values())

    def rate(self, driver: Driver, seconds: float, began: float) -> float:
        """Cores busy while the driver runs its normal ticks for ``seconds``."""
        pids, start_wall = self.pids(), time.monotonic()
        start_cpu = cpu_seconds(pids) + time.process_time()
        while time.monotonic() - start_wall < seconds:
            tick = time.monotonic()
            driver.tick_telemetry(time.time() - began)
            if int(time.monotonic() - start_wall) % 2 == 0:
                driver.tick_plays()
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        return (cpu_seconds(pids) + time.process_time() - start_cpu) / (time.monotonic() - start_wall)


def calibrate(pipe: Pipeline, driver: Driver, listeners: list[Listener], began: float,
              probe: int = 12) -> dict[str, float]:
    """The pipeline's capacity on this machine: the CPU the whole pipeline uses with every listener's
    telemetry but no music (the base), then with ``probe`` listeners' music on; capacity is the spare
    cores over the CPU one generating listener costs."""
    meter, cores = CpuMeter(pipe), len(os.sched_getaffinity(0))
    meter.rate(driver, 10, began)  # every listener's first token and state: not steady yet
    base = meter.rate(driver, 20, began)
    for listener in listeners[:probe]:
        listener.music = True
    meter.rate(driver, 10, began)  # sessions start, first segments: not steady yet
    loaded = meter.rate(driver, 30, began)  # 12 listeners over 30 s: the base's noise was as large as 6 over 20
    if loaded - base < 0.01 * probe:  # a generating listener costs ~0.1 core: this is noise, not a measure
        raise RuntimeError(f"calibration failed: {probe} generating listeners moved the pipeline's CPU from "
                           f"{base:.2f} to {loaded:.2f} cores; rerun, or pass --generating N")
    per_listener = (loaded - base) / probe
    return {"cores": cores, "base_cores": round(base, 2), "cores_per_generating_listener": round(per_listener, 4),
            "listeners": round((cores - base) / per_listener, 1)}


# --- the cohort --------------------------------------------------------------------------

@dataclass
class Listener:
    index: int
    music: bool
    session_id: str
    phase_s: float
    heard: set[str] = field(default_factory=set)

    @property
    def user_id(self) -> str:
        return f"chaos-user-{self.index:04d}"

    @property
    def plan(self) -> tuple[str, str]:
        """(subscription tier, territory): fixed per listener, carried by its token."""
        return ("PREMIUM", "FREE")[self.index % 2], ("DE", "US", "FR")[self.index % 3]

    def body(self, t: float) -> tuple[int, int, str]:
        """Alternating 40 s of rest and 40 s of running, each listener at its own phase."""
        running = int((t + self.phase_s) // 40) % 2 == 1
        return (155, 168, "RUNNING") if running else (72, 0, "RESTING")


@dataclass
class Acked:
    """What the driver was told: acknowledged event and play ids, and every HTTP outcome."""

    telemetry: set[str] = field(default_factory=set)
    plays: dict[str, dict[str, Any]] = field(default_factory=dict)
    retries: int = 0
    consent_changes: int = 0
    playlist_errors: int = 0
    bad_requests: int = 0
    bad_request_problems: list[str] = field(default_factory=list)


class Driver:
    """Telemetry at 1 Hz, plays for heard segments, consent flips; resends what was not acknowledged."""

    def __init__(self, pipe: Pipeline, listeners: list[Listener], seed: int) -> None:
        self.pipe, self.listeners, self.rng = pipe, listeners, random.Random(seed)
        self.by_user = {lt.user_id: lt for lt in listeners}
        self._listener_ids: dict[str, str] = {}
        self.acked = Acked()
        self.pending_telemetry: list[dict[str, Any]] = []
        self.pending_plays: list[dict[str, Any]] = []
        self.works = [w.work_id for w in load_catalog()]
        snapshot = ConsentSnapshot.load()
        self.holders = sorted({h for w in load_catalog() for h in w.rights_holders} & snapshot.granted_generation)
        self.withdrawn: set[str] = set()
        self.snapshot = snapshot

    def seed_consent(self) -> None:
        for holder in sorted({h for w in load_catalog() for h in w.rights_holders}):
            body = self.snapshot.consent_body(holder)
            self.put_consent(holder, body["ai_generation"], body["ai_training"])

    def put_consent(self, holder: str, generation: bool, training: bool = True) -> None:
        body = {"ai_training": training, "ai_generation": generation, "likeness": False}
        while True:
            status, _ = http("PUT", f"{self.pipe.ingest_url}/v1/rights-holders/{holder}/consent",
                             self.pipe.admin_key, body)
            if 200 <= status < 300:
                self.acked.consent_changes += 1
                return
            self.acked.retries += 1
            time.sleep(0.5)

    def flip_consent(self) -> None:
        """One holder withdraws AI-generation consent, or an earlier one gives it back."""
        if self.withdrawn and (len(self.withdrawn) >= 3 or self.rng.random() < 0.5):
            holder = self.rng.choice(sorted(self.withdrawn))
            self.withdrawn.discard(holder)
            self.put_consent(holder, True)
        else:
            holder = self.rng.choice([h for h in self.holders if h not in self.withdrawn])
            self.withdrawn.add(holder)
            self.put_consent(holder, False)

    def tick_telemetry(self, t: float) -> None:
        now_ms = int(time.time() * 1000)
        for listener in self.listeners:
            hr, cadence, activity = listener.body(t)
            self.pending_telemetry.append({
                "event_id": str(uuid.uuid4()), "user_id": listener.user_id, "session_id": listener.session_id,
                "event_time": now_ms, "heart_rate_bpm": hr, "cadence_spm": cadence, "activity": activity,
                "music": listener.music})
        self.pending_telemetry = self._post("telemetry", "events", self.pending_telemetry, "event_id",
                                            self.acked.telemetry)

    def tick_plays(self) -> None:
        now_ms = int(time.time() * 1000)
        for listener in self.listeners:
            if not listener.music:
                continue
            status, raw = http("GET", f"{self.pipe.delivery_url}/v1/playlist?session_id={listener.session_id}",
                               self.token(listener), timeout=5)
            if status != 200:
                self.acked.playlist_errors += 1
                continue
            for seg in json.loads(raw)["segments"]:
                heard_at = seg["deadline"] + seg["duration_ms"] + 1000
                if seg["segment_id"] in listener.heard or heard_at > now_ms:
                    continue
                listener.heard.add(seg["segment_id"])
                short = self.rng.random() < 0.1  # skipped after 5 s: not paid
                self.pending_plays.append({
                    "play_id": str(uuid.uuid4()), "user_id": listener.user_id, "content_kind": "AI_SEGMENT",
                    "segment_id": seg["segment_id"], "started_at": heard_at - seg["duration_ms"] - 1000,
                    "ms_played": min(5000, seg["duration_ms"] - 1) if short else seg["duration_ms"],
                    "completed": not short})
        for _ in range(3):  # a few catalog plays (the works themselves, e.g. a cool-down playlist)
            listener = self.rng.choice(self.listeners)
            self.pending_plays.append({
                "play_id": str(uuid.uuid4()), "user_id": listener.user_id, "content_kind": "CATALOG_WORK",
                "work_id": self.rng.choice(self.works), "started_at": now_ms - 60_000, "ms_played": 45_000,
                "completed": True})
        self.pending_plays = self._post("plays", "plays", self.pending_plays, "play_id", None)

    def flush(self, timeout_s: float) -> None:
        """Send what is still unacknowledged (the last fault may just be over)."""
        deadline = time.monotonic() + timeout_s
        while (self.pending_telemetry or self.pending_plays) and time.monotonic() < deadline:
            self.pending_telemetry = self._post("telemetry", "events", self.pending_telemetry, "event_id",
                                                self.acked.telemetry)
            self.pending_plays = self._post("plays", "plays", self.pending_plays, "play_id", None)
            time.sleep(1)

    def token(self, listener: Listener) -> str | None:
        """The listener's token, minted by the pipeline as an app backend; None while ingest is down."""
        try:
            return self.pipe.token(listener.user_id, *listener.plan)
        except OSError:
            return None

    def _post(self, path: str, field_name: str, items: list[dict[str, Any]], id_field: str,
              acked: set[str] | None) -> list[dict[str, Any]]:
        """Post each listener's items with its own token (as its device would); return what must be
        sent again (not acknowledged: 5xx, 429, no answer)."""
        left: list[dict[str, Any]] = []
        per_listener: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            per_listener.setdefault(item["user_id"], []).append(item)
        for user_id, batch in per_listener.items():
            token = self.token(self.by_user[user_id])
            status, raw = http("POST", f"{self.pipe.ingest_url}/v1/{path}", token, {field_name: batch},
                               timeout=10) if token else (0, b"")
            if not 200 <= status < 300:
                self.acked.retries += 1
                left.extend(batch)
                continue
            rejected = {r["index"] for r in json.loads(raw)["rejected"]}
            for n, item in enumerate(batch):
                if n in rejected:
                    raise AssertionError(f"ingest rejected a well-formed {path} item: {json.loads(raw)['rejected']}")
                if acked is not None:
                    acked.add(item[id_field])
                else:  # under the id ingest gives it on the topic: (listener, play id)
                    self.acked.plays[listener_play_id(self.listener_id(user_id), item[id_field])] = item
        return left

    def listener_id(self, user_id: str) -> str:
        if user_id not in self._listener_ids:
            self._listener_ids[user_id] = driver_listener_id(self.pipe, self.by_user[user_id])
        return self._listener_ids[user_id]


def drive(pipe: Pipeline, driver: Driver, generating: int, began: float, seconds: float,
          consent_every_s: float | None = None, each_second: Callable[[float], None] | None = None,
          report: bool = True) -> None:
    """The cohort's load, once a second from ``began`` for ``seconds``: the first ``generating``
    listeners' players on (their sessions start one a second, not at once), telemetry for all, plays
    every 2 s, a consent flip every ``consent_every_s``, ``each_second(t)`` for the caller's own
    events, services that exited restarted (as an orchestrator would), a progress line every 30 s."""
    listeners = driver.listeners
    last_plays = last_consent = last_report = 0.0
    while (t := time.time() - began) < seconds:
        for listener in listeners[:min(generating, int(t) + 1)]:
            listener.music = True
        for listener in listeners[generating:]:
            listener.music = False
        driver.tick_telemetry(t)
        if t - last_plays >= 2:
            driver.tick_plays()
            last_plays = t
        if consent_every_s is not None and t - last_consent >= consent_every_s:
            driver.flip_consent()
            last_consent = t
        if each_second is not None:
            each_second(t)
        for name in pipe.supervise():
            print(f"  {name} exited on its own; restarted", flush=True)
        if report and t - last_report >= 30:
            last_report = t
            print(f"  t={t:5.0f}s  telemetry acked {len(driver.acked.telemetry):7d}  plays acked "
                  f"{len(driver.acked.plays):5d}  segments heard {sum(len(lt.heard) for lt in listeners):5d}",
                  flush=True)
        time.sleep(max(0.0, 1.0 - (time.time() - began - t)))


# --- hostile input -----------------------------------------------------------------------

@dataclass
class Injected:
    """Bad records produced to each input topic: physical topic -> {(partition, offset): kind}."""

    records: dict[str, dict[tuple[int, int], str]] = field(default_factory=lambda: defaultdict(dict))


def bad_records(kafka: KafkaSettings, logical: str, n: int) -> list[tuple[str, bytes, bytes]]:
    """(kind, key bytes, value bytes) of every kind of bad record for a topic."""
    serde = TopicSerde.for_topic(logical, kafka)
    key_dict, example = serde.contract.examples()[0][1]["key"], serde.contract.examples()[0][1]["value"]
    if logical == "catalog.works.v1":  # compacted: a real work's key would let compaction drop the real record
        key_dict = {"work_id": f"wk-chaos-bad-{n}"}
    elif logical == "catalog.consent.v1":
        key_dict = {"rights_holder_id": f"rh-chaos-bad-{n}", "work_id": None}
    key = serde.encode_key(key_dict)
    other = TopicSerde.for_topic("catalog.works.v1" if logical != "catalog.works.v1" else "listener.plays.v1", kafka)
    other_value = other.encode_value(other.contract.examples()[0][1]["value"])
    assert other_value is not None
    out = [("malformed", key, b"\x00\x01not avro at all " + str(n).encode()),
           ("wrong_schema", key, other_value),
           ("huge", key, serde.value.header + os.urandom(600_000))]
    out_of_range = _out_of_range(logical, example, n)
    if out_of_range is not None:
        encoded = serde.encode_value(out_of_range)
        assert encoded is not None
        out.append(("out_of_range", key, encoded))
    return out


def _out_of_range(logical: str, example: dict[str, Any], n: int) -> dict[str, Any] | None:
    """A record that decodes but that its consumer must refuse (None: the schema admits no such value)."""
    now = int(time.time() * 1000)
    if logical == "listener.telemetry.v1":
        return {**example, "event_id": str(uuid.uuid4()), "heart_rate_bpm": 400, "event_time": now}
    if logical == "listener.plays.v1":  # no rate card is in effect in 1970
        return {**example, "play_id": str(uuid.uuid4()), "content_kind": "CATALOG_WORK", "segment_id": None,
                "work_id": load_catalog()[0].work_id, "started_at": 0}
    if logical == "catalog.works.v1":
        shares = [{**s, "share_ppm": s["share_ppm"] - 1} for s in example["shares"]]
        return {**example, "work_id": f"wk-chaos-bad-{n}", "shares": shares}
    if logical == "soundtrack.requests.v1":
        return {**example, "request_id": f"req-chaos-bad-{n}", "params": {**example["params"], "tempo_bpm": 999.0},
                "deadline": now + 600_000}
    if logical == "soundtrack.segments.generated.v1":  # its audio is not in the store
        # a position of its own: watermark checks the audio when it serves a record, so a newer
        # bad version of the same position would replace this one unserved (by design)
        return {**example, "segment_id": f"seg-chaos-bad-{n}", "sequence": 100_000 + n}
    if logical == "soundtrack.segments.v1":
        influences = [{"work_id": load_catalog()[0].work_id, "weight_ppm": 999_999}]
        return {**example, "segment_id": f"seg-chaos-bad-{n}",
                "provenance": {**example["provenance"], "influences": influences}}
    return None  # consent (booleans and times), erasures (an id): any decodable record is a valid one


def inject_records(kafka: KafkaSettings, injected: Injected, n: int) -> int:
    producer = RawProducer({**kafka.client_config(), "message.max.bytes": 2_000_000, "logger": QUIET})
    sent = 0

    def on_delivery(kind: str) -> Any:
        def report(err: Any, msg: Any) -> None:
            if err is None:
                injected.records[msg.topic()][(msg.partition(), msg.offset())] = kind
        return report

    for logical in INPUT_TOPICS:
        for kind, key, value in bad_records(kafka, logical, n):
            producer.produce(kafka.topic(logical), key=key, value=value, on_delivery=on_delivery(kind))
            sent += 1
    if producer.flush(60) != 0:
        raise RuntimeError("bad records not delivered within 60 s")
    return sent


def bad_requests(pipe: Pipeline, acked: Acked) -> None:
    """Every HTTP endpoint with what a hostile or broken client sends; each must get a 4xx
    with a JSON reason (a 429 counts) and never a stack trace."""
    ingest, delivery, detect = pipe.ingest_url, pipe.delivery_url, f"http://127.0.0.1:{pipe.ports['detect']}"
    key = pipe.token("chaos-hostile-client")
    cases: list[tuple[str, str, str | None, Any, bytes | None]] = [
        ("POST", f"{ingest}/v1/telemetry", None, {"events": []}, None),
        ("POST", f"{ingest}/v1/telemetry", "not-a-key", {"events": []}, None),
        ("POST", f"{ingest}/v1/telemetry", pipe.app_key, {"events": [{}]}, None),  # an app key is no listener
        ("POST", f"{ingest}/v1/telemetry", key, {"events": [{"user_id": "chaos-user-0001"}]}, None),  # someone else
        ("POST", f"{ingest}/v1/tokens", pipe.app_key, {"user_id": "x y", "subscription_tier": "GOLD"}, None),
        ("POST", f"{ingest}/v1/tokens", key, {"user_id": "x"}, None),  # a token cannot mint tokens
        ("POST", f"{ingest}/v1/erasures", pipe.app_key, {"user_id": "chaos-user-0001"}, None),
        ("POST", f"{ingest}/v1/telemetry", key, None, b"{not json"),
        ("POST", f"{ingest}/v1/telemetry", key, {"events": [{}] * 1001}, None),
        ("POST", f"{ingest}/v1/plays", None, {"plays": []}, None),
        ("POST", f"{ingest}/v1/plays", key, None, b"\xff\xfe"),
        ("POST", f"{ingest}/v1/plays", key, {"plays": "many"}, None),
        ("PUT", f"{ingest}/v1/rights-holders/rh-demo-0001/consent", key, {"ai_generation": True}, None),
        ("PUT", f"{ingest}/v1/rights-holders/rh-demo-0001/consent", pipe.admin_key, {"ai_generation": "yes"}, None),
        ("PUT", f"{ingest}/v1/rights-holders/{'x' * 300}/consent", pipe.admin_key, {}, None),
        ("GET", f"{delivery}/v1/playlist?user_id=chaos-user-0001", None, None, None),
        ("GET", f"{delivery}/v1/playlist?user_id=chaos-user-0001", key, None, None),  # someone else's
        ("GET", f"{delivery}/v1/playlist", pipe.app_key, None, None),
        ("GET", f"{delivery}/v1/playlist.m3u8?user_id={'u' * 500}", key, None, None),
        ("GET", f"{delivery}/v1/audio/{'a' * 64}.wav?l={'b' * 64}&exp=1&sig=00", None, None, None),
        ("GET", f"{delivery}/v1/audio/{'a' * 64}.wav?l={'b' * 64}&exp=%C2%B2&sig=00", None, None, None),
        ("GET", f"{delivery}/v1/audio/..%2F..%2Fetc%2Fpasswd.wav", None, None, None),
        ("POST", f"{delivery}/v1/underruns", key, None, b" " * 10_000),
        ("POST", f"{delivery}/v1/underruns", key, None, b"[]"),
        ("POST", f"{detect}/v1/detect", None, None, b"RIFF"),
        ("POST", f"{detect}/v1/detect", pipe.app_key, None, b"RIFF\x00\x00garbage"),
    ]
    answers = [(method, url, *reachable(lambda m=method, u=url, a=auth, b=body, r=raw: http(m, u, a, b, r)))
               for method, url, auth, body, raw in cases]
    for url in (f"{ingest}/v1/telemetry", f"{ingest}/v1/plays", f"{detect}/v1/detect", f"{delivery}/v1/underruns"):
        credential = pipe.app_key if url.startswith(detect) else key
        answers.append(("POST", url + " (declares 2 GB)",
                        *reachable(lambda u=url, c=credential: declared_too_large(u, c))))
    for method, url, status, answer in answers:
        acked.bad_requests += 1
        text = answer.decode(errors="replace")
        try:
            reason = json.loads(answer).get("error") if answer else None
        except (ValueError, AttributeError):
            reason = None
        if not 400 <= status < 500 or not reason or "Traceback" in text or 'File "' in text:
            acked.bad_request_problems.append(f"{method} {url[:80]}: {status} {text[:120]!r}")


def reachable(call: Callable[[], tuple[int, bytes]], attempts: int = 10) -> tuple[int, bytes]:
    """The answer of ``call``, retried while nothing answers (the service may be restarting after
    its SIGKILL: a refused connection is right then, and says nothing about bad-input handling)."""
    for _ in range(attempts - 1):
        status, answer = call()
        if status:
            return status, answer
        time.sleep(2)
    return call()


def declared_too_large(url: str, key: str) -> tuple[int, bytes]:
    """Announce a 2 GB body and send none: the server must refuse it from the header alone."""
    parts = urlsplit(url)
    connection = HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=15)
    try:
        connection.putrequest("POST", parts.path)
        connection.putheader("Authorization", f"Bearer {key}")
        connection.putheader("Content-Length", str(2 * 1024**3))
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        connection.close()


# --- faults ------------------------------------------------------------------------------

@dataclass
class Fault:
    what: str
    started: float  # wall time, seconds
    over: float = 0.0  # when the service answered ready again / the broker answered


def keep_up(pipe: Pipeline, stop: threading.Event) -> None:
    """While the checks run, restart services that exit on their own, as an orchestrator would
    (royalty's watchdog exits by design when librdkafka wedges after a broker restart)."""
    while not stop.wait(1.0):
        for name in pipe.supervise():
            print(f"  {name} exited on its own during the checks; restarted", flush=True)


def down_after(pipe: Pipeline, timeout_s: float) -> list[str]:
    """The services not ready ``timeout_s`` after the checks (``keep_up`` still running): one
    restarted a moment ago gets the time a restart takes, one that stays down is named."""
    deadline = time.monotonic() + timeout_s
    while (down := [n for n in pipe.procs if not pipe.ready(n)]) and time.monotonic() < deadline:
        time.sleep(1.0)  # keep_up restarts what exited
    return down


def run_faults(pipe: Pipeline, kafka: KafkaSettings, plan: list[tuple[float, str]], began: float,
               faults: list[Fault], stop: threading.Event) -> None:
    for at, what in plan:
        while time.time() - began < at:
            if stop.wait(0.2):
                return
        fault = Fault(what, time.time())
        faults.append(fault)
        if what == "broker":
            restart_broker()
        else:
            pipe.kill(what)
        names = list(SERVICES) if what == "broker" else [what]
        deadline = time.monotonic() + 180
        while not all(pipe.ready(n) for n in names) and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.3)
        fault.over = time.time()
        print(f"  fault: {what:10s} at {fault.started - began:5.1f}s, recovered in {fault.over - fault.started:5.1f}s",
              flush=True)


# --- checks ------------------------------------------------------------------------------

def check_ingested(kafka: KafkaSettings, acked: Acked) -> dict[str, int]:
    events = {v["event_id"] for _, _, v in decode_all(kafka, "listener.telemetry.v1") if v is not None}
    plays = {v["play_id"] for _, _, v in decode_all(kafka, "listener.plays.v1") if v is not None}
    return {"telemetry_acked": len(acked.telemetry), "telemetry_lost": len(acked.telemetry - events),
            "plays_acked": len(acked.plays), "plays_lost": len(set(acked.plays) - plays)}


def decode_all(kafka: KafkaSettings, logical: str) -> list[tuple[Any, dict[str, Any], dict[str, Any] | None]]:
    """(message, key, value) of every decodable record of a topic."""
    serde = TopicSerde.for_topic(logical, kafka)
    out = []
    for msg in read_to_end(kafka, serde.topic):
        try:
            out.append((msg, serde.decode_key(msg.key()), serde.decode_value(msg.value())))
        except ValueError:
            continue
    return out


def check_royalty(kafka: KafkaSettings, acked: Acked, began_ms: int, timeout_s: float) -> dict[str, Any]:
    """Waits until every acknowledged play is in the ledger (or timeout), then compares the committed
    lines with what the pure rules give from the committed reference topics."""
    deadline = time.monotonic() + timeout_s
    while True:
        entries = [v for _, _, v in decode_all(kafka, "royalty.play-ledger.v1") if v is not None]
        ledgered = {e["play_id"] for e in entries}
        if set(acked.plays) <= ledgered or time.monotonic() > deadline:
            break
        time.sleep(3)
    per_play = Counter(e["play_id"] for e in entries)
    tables = ReferenceTables()
    for logical in (WORKS, CONSENT, SEGMENTS):
        for msg, key, value in decode_all(kafka, logical):
            try:
                tables.apply(logical, key, value, msg.timestamp()[1])
            except (ValueError, KeyError):
                continue  # an injected bad record: royalty skips it too
    # What an erased listener's plays pay depends on when royalty saw the erasure: they are not compared.
    erased = {key["listener_id"] for _, key, _ in decode_all(kafka, ERASURES)}
    uncompared = {v["play_id"] for _, _, v in decode_all(kafka, "listener.plays.v1")
                  if v and v["listener_id"] in erased}
    rates, history, expected = RateCard.load(), PlayHistory(), {}
    for msg, _, value in decode_all(kafka, "listener.plays.v1"):  # in topic order: the first of a play id counts
        if value is None:
            continue
        play = Play.from_record(value)
        try:
            decision = decide(play, rates, tables.works, tables.segments, tables.consent, history,
                              position(msg.partition(), msg.offset()))
        except RateCardMissing:
            continue  # an injected play no rate prices: dead-lettered
        remember(history, play, decision, msg.partition())  # unacknowledged plays count too: royalty saw them
        if value["play_id"] not in acked.plays or value["play_id"] in uncompared:
            continue
        if isinstance(decision, Paid):
            for line in decision.lines:
                expected[(play.play_id, line.rights_holder_id, line.right_type)] = line.amount_micros
    lines = [v for _, _, v in decode_all(kafka, "royalty.events.v1")
             if v is not None and v["play_id"] in acked.plays and v["play_id"] not in uncompared]
    got = Counter((x["play_id"], x["rights_holder_id"], x["right_type"]) for x in lines)
    amounts = {(x["play_id"], x["rights_holder_id"], x["right_type"]): x["amount_micros"] for x in lines}
    compared = [e for e in entries if e["play_id"] in acked.plays and e["play_id"] not in uncompared]
    _, figures = build(lines, compared, rates, began_ms - 3_600_000,
                       int(time.time() * 1000) + 3_600_000)
    outcomes = Counter(e["outcome"] for e in entries if e["play_id"] in acked.plays)
    return {
        "plays_ledgered": len(set(acked.plays) & ledgered), "plays_unledgered": len(set(acked.plays) - ledgered),
        "ledger_doubled": sum(1 for p in acked.plays if per_play[p] > 1), "paid_plays": outcomes["PAID"],
        "unpaid_plays": outcomes["UNPAID"], "expected_lines": len(expected), "committed_lines": len(lines),
        "lines_missing": sum(1 for k in expected if k not in got),
        "lines_doubled": sum(1 for c in got.values() if c > 1),
        "lines_unexpected": sum(1 for k in got if k not in expected),
        "lines_wrong_amount": sum(1 for k, a in amounts.items() if k in expected and expected[k] != a),
        "paid_micros": sum(amounts.values()), "reconciled": bool(figures["reconciled"]),
        "reconciliation_problems": figures["problems"],
    }


def check_watermarks(pipe: Pipeline, listeners: list[Listener]) -> dict[str, int]:
    """Every segment in every playlist, fetched as a player would and sent to the detection API."""
    segments: list[dict[str, Any]] = []
    for listener in listeners:
        if listener.music:
            status, raw = http("GET", f"{pipe.delivery_url}/v1/playlist?session_id={listener.session_id}",
                               pipe.token(listener.user_id, *listener.plan))
            segments += json.loads(raw)["segments"] if status == 200 else []

    def verifies(seg: dict[str, Any]) -> bool:
        status, audio = http("GET", pipe.delivery_url + seg["url"], timeout=30)
        if status != 200:
            print(f"  audio of {seg['segment_id']} not served: HTTP {status}")
            return False
        status, answer = http("POST", f"http://127.0.0.1:{pipe.ports['detect']}/v1/detect", pipe.app_key,
                              raw=audio, timeout=60)
        verdict = json.loads(answer) if status == 200 else {}
        if not (verdict.get("detected") and verdict.get("segment_id") == seg["segment_id"]):
            print(f"  watermark check failed for {seg['segment_id']}: HTTP {status}, {str(verdict)[:200]}")
            return False
        return True

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(verifies, segments))
    return {"segments_checked": len(results), "segments_failed": results.count(False)}


def check_dlqs(kafka: KafkaSettings, injected: Injected) -> dict[str, Any]:
    found, good_in_dlq, no_reason, duplicates = 0, 0, 0, 0
    missing_by_topic = {}
    for logical in INPUT_TOPICS:
        topic = kafka.topic(logical)
        wanted = injected.records.get(topic, {})
        seen: Counter[tuple[int, int]] = Counter()
        for msg in read_to_end(kafka, kafka.topic(logical + ".dlq")):
            headers = {k: v.decode() for k, v in (msg.headers() or [])}
            source = (int(headers.get("dlq.source.partition", -1)), int(headers.get("dlq.source.offset", -1)))
            if headers.get("dlq.source.topic") != topic or source not in wanted:
                good_in_dlq += 1
                print(f"  not injected but in {logical}.dlq: {headers}")
                continue
            if not headers.get("dlq.reason"):
                no_reason += 1
            seen[source] += 1
        found += len(seen)
        duplicates += sum(c - 1 for c in seen.values())
        missing = [f"{wanted[s]}@{s[0]}:{s[1]}" for s in wanted if s not in seen]
        if missing:
            missing_by_topic[logical] = missing
    return {"bad_records_injected": sum(len(v) for v in injected.records.values()), "bad_records_in_dlq": found,
            "bad_records_missing": sum(len(v) for v in missing_by_topic.values()), "missing": missing_by_topic,
            "dlq_without_reason": no_reason, "good_records_in_dlq": good_in_dlq,
            "dlq_redeliveries": duplicates}


def late_segments(kafka: KafkaSettings, listeners: set[str], until_ms: int,
                  excused: dict[str, int] | None = None) -> tuple[int, list[tuple[float, bool, int | None]]]:
    """(positions due, [(deadline in s, never made, ms late or None)] of every position of a session whose segment
    was not on soundtrack.segments.v1 by its deadline in any version), for the cohort's requests
    due by ``until_ms``. A position the scheduler replanned has several requests (versions);
    inference and watermark skip a version superseded while it waited, and a player plays
    whichever version is there first, so the position is on time if one version is.

    Not underruns, counted in ``excused`` instead: positions never made whose request came while
    inference had told the listener AT_CAPACITY (``refused``: within a refusal's retry period on
    soundtrack.admissions.v1), and positions of a session before its first made segment
    (``before_start``: admission's slow start deferred them; the player starts with the first that
    exists, so nothing is missing from what it plays, it starts later)."""
    produced: dict[str, int] = {}
    for msg, _, value in decode_all(kafka, "soundtrack.segments.v1"):
        if value is not None:
            produced.setdefault(value["segment_id"], msg.timestamp()[1])
    refusals: dict[str, list[tuple[int, int]]] = {}
    for _, _, value in decode_all(kafka, "soundtrack.admissions.v1"):
        if value is not None and value["decision"] == "AT_CAPACITY":
            refusals.setdefault(value["listener_id"], []).append(
                (value["decided_at"], value["decided_at"] + value["retry_after_ms"]))
    positions: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for _, _, value in decode_all(kafka, "soundtrack.requests.v1"):
        if value is not None and value["listener_id"] in listeners:
            positions.setdefault((value["listener_id"], value["session_id"], value["sequence"]), []).append(value)
    first_made: dict[tuple[str, str], int] = {}
    for (listener, session, sequence), versions in positions.items():
        if any(segment_id(r["request_id"]) in produced for r in versions):
            first_made[(listener, session)] = min(first_made.get((listener, session), sequence), sequence)
    excused = {"refused": 0, "before_start": 0} if excused is None else excused
    excused.setdefault("refused", 0)
    excused.setdefault("before_start", 0)
    due = 0
    late = []
    for (listener, session, sequence), versions in positions.items():
        deadline = min(r["deadline"] for r in versions)
        if deadline > until_ms:
            continue
        ready = [(r["deadline"], produced.get(segment_id(r["request_id"]))) for r in versions]
        made = any(at is not None for _, at in ready)
        if not made and sequence < first_made.get((listener, session), 2**62):
            excused["before_start"] += 1
            continue
        if not made and any(start <= r["requested_at"] < stop for r in versions
                            for start, stop in refusals.get(listener, [])):
            excused["refused"] += 1
            continue
        due += 1
        if not any(at is not None and at <= d for d, at in ready):
            made_at = [at - d for d, at in ready if at is not None]
            late.append((deadline / 1000, not made, min(made_at) if made_at else None))
    return due, late


def check_underruns(kafka: KafkaSettings, listeners: set[str], faults: list[Fault], began: float,
                    until_ms: int) -> dict[str, Any]:
    """Every request of the cohort whose deadline passed: was its segment on soundtrack.segments.v1
    by then? Late or missing ones are underruns, attributed to the fault they followed."""
    excused: dict[str, int] = {}
    due, late = late_segments(kafka, listeners, until_ms, excused)
    out: dict[str, Any] = {"requests_due": due, "positions_refused_at_capacity": excused["refused"],
                           "positions_before_session_start": excused["before_start"],
                           "underruns_near_broker_restart": 0,
                           "underruns_near_service_kill": 0, "underruns_elsewhere": 0}
    per_10s: Counter[int] = Counter()
    missing = 0
    elsewhere = []
    for at, never_made, late_ms in late:
        per_10s[int((at - began) // 10) * 10] += 1
        missing += never_made
        near = [f for f in faults if f.started - 1 <= at <= (f.over or f.started + 120) + RECOVERY_S]
        if any(f.what == "broker" for f in near):
            out["underruns_near_broker_restart"] += 1
        elif near:
            out["underruns_near_service_kill"] += 1
        else:
            out["underruns_elsewhere"] += 1
            elsewhere.append({"at_s": round(at - began, 1), "late_ms": late_ms})  # None: never made
    return out | {"underruns_elsewhere_detail": elsewhere, "underruns_never_made": missing,
                  "underruns_by_10s": dict(sorted(per_10s.items())),
                  "playback_recovery": playback_recovery(late, faults, began)}


def playback_recovery(late: list[tuple[float, bool, int | None]], faults: list[Fault],
                      began: float) -> list[dict[str, Any]]:
    """Per fault: how long after the faulted part was ready again the last late segment was due
    (before the next fault), and how many were late from the fault on: issue #16 wants playback on
    time again within two segments of the part being ready."""
    out = []
    ordered = sorted(faults, key=lambda f: f.started)
    for f, after in zip(ordered, [*ordered[1:], None], strict=True):
        until = after.started - 1 if after is not None else float("inf")
        due = [at for at, _, _ in late if f.started - 1 <= at < until]
        out.append({"what": f.what, "at_s": round(f.started - began, 1), "late": len(due),
                    "playback_recovered_s": round(max(0.0, max(due) - f.over), 1) if due else 0.0})
    return out


def check_erasure(kafka: KafkaSettings, pipe: Pipeline, listener: Listener) -> dict[str, int]:
    """One listener asks to be forgotten: their soundtrack state gets a tombstone on the worker's
    compacted changelog and delivery serves them an empty playlist."""
    token = pipe.token(listener.user_id, *listener.plan)
    status, _ = http("POST", f"{pipe.ingest_url}/v1/erasures", token)
    listener_id = driver_listener_id(pipe, listener).encode()
    keys = {listener_id, b'"' + listener_id + b'"'}  # Faust writes changelog keys JSON-encoded
    changelog = kafka.topic("soundtrack-listeners-changelog")
    deadline, tombstones, left = time.monotonic() + 60, 0, -1
    while time.monotonic() < deadline:
        tombstones = sum(1 for m in read_to_end(kafka, changelog) if m.key() in keys and m.value() is None)
        answer = http("GET", f"{pipe.delivery_url}/v1/playlist", token)
        left = len(json.loads(answer[1])["segments"]) if answer[0] == 200 else -1
        if tombstones and left == 0:
            break
        time.sleep(1)
    return {"erasure_status": status, "erasure_tombstones": tombstones, "erased_playlist_segments": left}


def check_secrets(kafka: KafkaSettings, pipe: Pipeline, listeners: list[Listener]) -> dict[str, int]:
    """No raw user id, API key or secret in any service log or on any topic of the run."""
    secrets_ = [pipe.app_key, pipe.admin_key, (pipe.workdir / "pseudonym.secret").read_text().strip()]
    secrets_ += list(json.loads((pipe.workdir / "watermark-keys.json").read_text())["keys"].values())
    secrets_ += [k["d"] for k in json.loads((pipe.workdir / "token-signing.jwks").read_text())["keys"]]
    needles = [s.encode() for s in secrets_] + [lt.user_id.encode() for lt in listeners]
    log_hits = 0
    for name in pipe.procs:
        text = (pipe.workdir / f"{name}.log").read_bytes()
        log_hits += sum(1 for n in needles if n in text)
    topic_hits, scanned = 0, 0
    from confluent_kafka.admin import AdminClient

    topics = [t for t in AdminClient(kafka.client_config()).list_topics(timeout=30).topics
              if t.startswith(kafka.topic_prefix)]
    for topic in topics:
        for msg in read_to_end(kafka, topic):
            scanned += 1
            blob = (msg.key() or b"") + (msg.value() or b"") + b"".join(v for _, v in msg.headers() or [] if v)
            topic_hits += sum(1 for n in needles if n in blob)
    return {"secret_scan_records": scanned, "secret_scan_logs": len(pipe.procs), "secret_hits_in_logs": log_hits,
            "secret_hits_on_topics": topic_hits}


# --- the run -----------------------------------------------------------------------------

def run(listeners_n: int, generating: int | None, seconds: float, seed: int = 1,
        broker_restart: bool = True, keep_topics: bool = False) -> dict[str, Any]:
    base = KafkaSettings.from_env()
    if broker_restart and not base.local_kafka:
        raise SystemExit("the broker restart needs the local broker (KAFKA_BOOTSTRAP_SERVERS is set)")
    kafka = replace(base, topic_prefix=f"chaos-{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka)
    pipe = Pipeline(kafka, STATE_DIR / "chaos" / kafka.topic_prefix.rstrip("."), royalty=True).start()
    rng = random.Random(seed)
    run_id = uuid.uuid4().hex[:6]
    listeners = [Listener(i, False, f"chaos-{run_id}-{i:04d}", rng.uniform(0, 80)) for i in range(listeners_n)]
    driver = Driver(pipe, listeners, seed)
    injected, stop = Injected(), threading.Event()
    faults: list[Fault] = []
    result: dict[str, Any] = {"listeners": listeners_n, "seconds": seconds, "no_broker": not broker_restart}
    try:
        driver.seed_consent()
        if generating is None:
            capacity = calibrate(pipe, driver, listeners, time.time())
            generating = min(listeners_n, max(2, round(capacity["listeners"] / 2)))
            result |= {"capacity": capacity}
            print(f"capacity: {capacity['listeners']} generating listeners (base {capacity['base_cores']} cores, "
                  f"{capacity['cores_per_generating_listener']} cores each, {capacity['cores']} cores)", flush=True)
        result["generating"] = generating
        print(f"music on for {generating} of {listeners_n} listeners", flush=True)
        order = list(SERVICES)
        rng.shuffle(order)
        kinds = order[:3] + (["broker"] if broker_restart else []) + order[3:]
        span = (0.2 * seconds, 0.75 * seconds)
        plan = [(span[0] + i * (span[1] - span[0]) / max(1, len(kinds) - 1), k) for i, k in enumerate(kinds)]
        inject_at = [0.15 * seconds, 0.5 * seconds, 0.8 * seconds]
        began = time.time()
        fault_thread = threading.Thread(target=run_faults, args=(pipe, kafka, plan, began, faults, stop), daemon=True)
        fault_thread.start()
        def inject(t: float) -> None:
            if inject_at and t >= inject_at[0]:
                inject_at.pop(0)
                inject_records(kafka, injected, len(inject_at))
                bad_requests(pipe, driver.acked)

        drive(pipe, driver, generating, began, seconds, consent_every_s=20, each_second=inject)
        fault_thread.join(300)
        driver.flush(timeout_s=60)
        load_over_ms = int(time.time() * 1000)
        print("load over; checking", flush=True)
        threading.Thread(target=keep_up, args=(pipe, stop), daemon=True).start()  # the checks take minutes
        result |= {"faults": [{"what": f.what, "at_s": round(f.started - began, 1),
                               "recovered_s": round(f.over - f.started, 1)} for f in faults]}
        result |= {"kills": sum(1 for f in faults if f.what != "broker"),
                   "broker_restarts": sum(1 for f in faults if f.what == "broker"),
                   "unplanned_exits": dict(pipe.exits), "http_retries": driver.acked.retries,
                   "consent_changes": driver.acked.consent_changes, "playlist_errors": driver.acked.playlist_errors}
        result |= check_ingested(kafka, driver.acked)
        result |= check_royalty(kafka, driver.acked, int(began * 1000), timeout_s=240)
        result |= check_watermarks(pipe, listeners)
        result |= check_dlqs(kafka, injected)
        result |= {"bad_requests": driver.acked.bad_requests,
                   "bad_requests_mishandled": len(driver.acked.bad_request_problems),
                   "bad_request_problems": driver.acked.bad_request_problems}
        result |= check_erasure(kafka, pipe, listeners[0])
        listener_ids = {driver_listener_id(pipe, lt) for lt in listeners if lt.music}
        result |= check_underruns(kafka, listener_ids, faults, began, load_over_ms - 5000)
        result["services_down_at_end"] = down_after(pipe, timeout_s=60)
        result["unplanned_exits"] = dict(pipe.exits)  # the checks' exits too
        result |= check_secrets(kafka, pipe, listeners)
    finally:
        stop.set()
        pipe.stop()
        shutil.rmtree(pipe.workdir / "segments", ignore_errors=True)  # the logs stay for a look
    result["violations"] = violations(result)
    if not keep_topics:
        delete_prefixed_topics(kafka)
    return result


def driver_listener_id(pipe: Pipeline, listener: Listener) -> str:
    """The pseudonymous id ingest gives the listener (computed with the run's secret)."""
    secret = (pipe.workdir / "pseudonym.secret").read_text().strip()
    return Pseudonymizer(bytes.fromhex(secret)).listener_id(listener.user_id)


COUNTS = ("telemetry_acked", "plays_acked", "paid_plays", "committed_lines", "segments_checked", "bad_records_in_dlq",
          "bad_requests", "kills", "broker_restarts", "requests_due", "secret_scan_records", "consent_changes")


MUST_BE_ZERO = ("telemetry_lost", "plays_lost", "plays_unledgered", "ledger_doubled", "lines_missing", "lines_doubled",
                "lines_unexpected", "lines_wrong_amount", "segments_failed", "bad_records_missing",
                "dlq_without_reason", "good_records_in_dlq", "bad_requests_mishandled", "underruns_elsewhere",
                "secret_hits_in_logs", "secret_hits_on_topics", "erased_playlist_segments")


def violations(r: dict[str, Any]) -> int:
    """Every failed check (a check that did not run counts as failed), plus every check that had
    nothing to check (it could not have failed)."""
    r["empty_checks"] = [c for c in COUNTS if not r.get(c) and not (c == "broker_restarts" and r.get("no_broker"))]
    return (len(r["empty_checks"]) + sum(abs(int(r.get(k, 1))) for k in MUST_BE_ZERO)
            + (not r.get("reconciled", False)) + len(r.get("services_down_at_end", ["?"]))
            + (r.get("erasure_status") != 202) + (not r.get("erasure_tombstones")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listeners", type=int, default=200)
    parser.add_argument("--generating", type=int, default=None,
                        help="listeners with music on (default: half the capacity measured at start)")
    parser.add_argument("--seconds", type=float, default=360)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-broker-restart", action="store_true")
    parser.add_argument("--keep-topics", action="store_true", help="leave the run's topics for a look")
    args = parser.parse_args()
    result = run(args.listeners, args.generating, args.seconds, args.seed, not args.no_broker_restart,
                 args.keep_topics)
    for f in result.get("playback_recovery", []):
        print(f"  playback after {f['what']:10s} at {f['at_s']:5.1f}s: {f['late']:3d} late, "
              f"on time again {f['playback_recovered_s']:5.1f}s after it was ready")
    print(f"violations: {result['violations']}")
    print("RESULT " + json.dumps(result))
    sys.exit(1 if result["violations"] else 0)


if __name__ == "__main__":
    main()
