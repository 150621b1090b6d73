"""Adaptation delay of the whole pipeline on the local broker, and one soundtrack worker's throughput.

Phase 1 (step changes): N listeners rest (70 bpm, no cadence) for --rest-s, then all start
running at 170 spm at once for --run-s, then all slow to a walk at 105 spm for --walk-s;
telemetry goes through ingest every second per listener.

What the ear gets: a simulated player per listener follows the playlist protocol as the
listener page does (poll GET /v1/playlist every second with the listener token, fetch each
new segment's signed audio URL, schedule it right after the previous one; the first one, and
the one after running dry (a segment that arrives after its slot: a player underrun), where the
server's schedule has it, its deadline plus 1.5 s; a replacement of a position that has not
started yet takes its slot, and what was scheduled after it is scheduled again after the
replacement). The tempo of every played segment is measured from its audio, beat by beat
(``tests.hearing``: the glide whose beat grid best explains its onsets), not from metadata;
``slowest_up_trace`` lists what the slowest listener of the step up played. From the change
instant (event time of the first sample in the new state), per listener:
  audible_first      the start of the first played segment after which the played tempo stays
                     at least 3% away from the tempo playing at the change, toward the target
  audible_converged  the start of the first played segment after which the played tempo stays
                     within 3% of the target (170 BPM up, 105 BPM down)
reported as p95 over listeners (a listener who never gets there counts as infinitely late).

Design and system delays of the step up, for each listener:
  designed   the instant the policy (run in this process on the same samples and times,
             stepping every 10 ms) would first emit a request with the new tempo: the
             hold, plus waiting for the segment boundary the request belongs to
  request    Kafka timestamp of the first request with the new tempo (soundtrack worker)
  ready      when the first watermarked segment at the new tempo reached soundtrack.segments.v1
             (inference + watermark), read by this process
  request_delay = request - designed (the system part); segment_ready = ready - designed
Underruns: segments that reached a playlist after their deadline (delivery) plus requests
inference dropped because their deadline had passed (the player gets nothing for them).

Bursts: --burst-listeners (100) new sessions start in the same second and run for
--burst-after-s (``burst_start``); then as many start together at rest and after
--burst-before-s all start running in the same second (``burst_change``). Beyond capacity,
inference refuses listeners it is not serving (admission control: they are told so, counted in
``refusals_announced_*`` and ``listeners_served_*``, not as underruns); ``underruns_burst_*``
are the admitted sessions' late segments and dropped requests, and a player that runs dry after
its playlist said AT_CAPACITY counts in ``player_gaps_after_refusal_*``. ``startup_delay_s_*``: the
worker's start-up delay for a new session (soundtrack.startup) at the burst's start, and its range.

Phase 2 (throughput): inference and watermark are stopped; E telemetry events for 2,000
listeners are produced to listener.telemetry.v1 as fast as possible; the worker's rate is E
over the time until its committed offsets cover them all. Baselines in the same run: a raw
confluent-kafka consumer decoding the same events, and the least a Faust worker can do with
them (bench/faust_ceiling.py: iterate and decode, no state, no output), timed the same way
over everything on the topic: the ceiling Faust puts on the soundtrack worker. With --profile
(``make profile-worker`` runs phase 2 alone with it) py-spy samples the worker while it works
through the events: ``worker_profile`` gives the share of its on-CPU samples by the package of the
innermost frame, and the shares under the telemetry agent, aiokafka's producer and Faust's transport.
Last line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, TopicPartition
from tests.hearing import Played, audible, track_beats
from tests.pipeline import Pipeline, cpu_seconds

from kit.auth import Pseudonymizer
from kit.deadlines import PLAYER_MARGIN_MS
from kit.producer import Producer
from kit.serde import TopicSerde
from kit.settings import REPO_ROOT, KafkaSettings
from kit.topics import delete_prefixed_topics, ensure_topics
from soundtrack.policy import HOLD_MS
from soundtrack.schedule import ListenerState, due_requests, observe


def post(url: str, key: str, body: Any) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=15) as response:
        assert response.status == 202, response.read()


class Follower(threading.Thread):
    """Records (arrival wall ms, Kafka timestamp ms, value) of every record on a topic from now on."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        super().__init__(daemon=True)
        self.serde = TopicSerde.for_topic(topic, kafka)
        self.records: list[tuple[int, int, dict[str, Any]]] = []
        self.stop = threading.Event()
        self.consumer = Consumer({**kafka.client_config(), "group.id": f"bench-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False})
        parts = self.consumer.list_topics(self.serde.topic, timeout=30).topics[self.serde.topic].partitions
        self.consumer.assign([TopicPartition(self.serde.topic, p, OFFSET_END) for p in parts])

    def run(self) -> None:
        while not self.stop.is_set():
            msg = self.consumer.poll(0.1)
            if msg is not None and msg.error() is None:
                self.records.append((int(time.time() * 1000), msg.timestamp()[1], self.serde.decode_value(msg.value())))
        self.consumer.close()


SCHEDULE_AFTER_DEADLINE_S = PLAYER_MARGIN_MS / 1000  # as the listener page: the server's schedule plays a
# segment this long after its deadline (kit.deadlines; delivery's OpenAPI says so)


@dataclass
class Player:
    """One listener's player, scheduling as the listener page does (see the module docstring)."""

    user: str
    # sequence -> ((requested_at, segment id) of the newest version seen, what plays)
    slots: dict[int, tuple[tuple[int, str], Played]] = field(default_factory=dict)
    next_start_s: float = 0.0
    underruns: int = 0
    swaps: int = 0
    told: bool = False  # the playlist said AT_CAPACITY since the last segment was taken
    refused_gaps: int = 0  # ran dry after being told (admission control): not an underrun
    keep_audio: bool = True  # False: schedule only (the steady window measures no tempo)

    @property
    def played(self) -> list[Played]:
        """What plays (or played), in order."""
        return [slot for _, slot in sorted(self.slots.values(), key=lambda s: s[1].start_ms)]

    def take(self, seg: dict[str, Any], audio: bytes, now: float, server_ahead_s: float = 0.0) -> None:
        """Schedule a fetched segment: after the last one, or in the slot of the version it replaces
        if that has not started (what was scheduled after it goes, to be scheduled again)."""
        sequence, version = seg["sequence"], (seg["requested_at"], seg["segment_id"])
        if sequence in self.slots:
            start = self.slots[sequence][1].start_ms / 1000
            if start <= now + 0.05:
                self.slots[sequence] = (version, self.slots[sequence][1])  # started: too late to swap
                return
            self.swaps += 1
            self.slots = {k: v for k, v in self.slots.items() if k < sequence}
            self.next_start_s = start
        elif self.next_start_s == 0 or self.next_start_s < now:  # the first, or the player ran dry:
            if self.next_start_s != 0:  # (the previous segment ended before this one arrived)
                if self.told:
                    self.refused_gaps += 1
                else:
                    self.underruns += 1
            # start where the server's schedule has it, never earlier (else the player's buffer is smaller)
            planned = seg["deadline"] / 1000 + SCHEDULE_AFTER_DEADLINE_S - server_ahead_s
            self.next_start_s = max(now + 0.05, planned)
        self.told = False
        self.slots[sequence] = (version, Played(int(self.next_start_s * 1000), seg["duration_ms"],
                                                audio if self.keep_audio else b"", seg["params"]))
        self.next_start_s += seg["duration_ms"] / 1000


def get(url: str, token: str) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=15) as response:
        return bytes(response.read())


def run_players(pipeline: Pipeline, players: list[Player], session: str, stop: threading.Event) -> None:
    """Every second, each player polls its playlist and schedules what is new, in order."""
    while not stop.is_set():
        turn = time.time()
        for player in players:
            token = pipeline.token(player.user)
            try:
                asked = time.time()
                playlist = json.loads(get(f"{pipeline.delivery_url}/v1/playlist?session_id={session}&revisions=1",
                                         token))
            except OSError:
                continue
            admission = playlist.get("admission")
            player.told |= admission is not None and admission["decision"] == "AT_CAPACITY"
            for seg in playlist["segments"]:
                held = player.slots.get(seg["sequence"])
                if held is not None and held[0] >= (seg["requested_at"], seg["segment_id"]):
                    continue  # the same, or an older version (a lagging delivery replica): never swap back
                try:
                    audio = get(f"{pipeline.delivery_url}{seg['url']}", token)
                except OSError:
                    break  # try again at the next poll, in order
                player.take(seg, audio, time.time(), playlist["server_time"] / 1000 - asked)
        stop.wait(max(0.0, 1.0 - (time.time() - turn)))


def p95(values: list[float | None]) -> float | None:
    """p95 with a missing value counted as infinitely late (None if the p95 itself is missing)."""
    ranked = sorted((v if v is not None else float("inf")) for v in values)
    value = ranked[min(len(ranked) - 1, int(0.95 * len(ranked)))] if ranked else float("inf")
    return None if value == float("inf") else round(value, 2)


def median(values: list[float | None]) -> float | None:
    ranked = sorted((v if v is not None else float("inf")) for v in values)
    value = ranked[len(ranked) // 2] if ranked else float("inf")
    return None if value == float("inf") else round(value, 2)


def p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(0.99 * len(values)))] if values else float("nan")


def step_change(pipeline: Pipeline, listeners: int, rest_s: float, run_s: float, walk_s: float) -> dict[str, Any]:
    kafka = pipeline.kafka
    secret = bytes.fromhex((pipeline.workdir / "pseudonym.secret").read_text().strip())
    users = [f"bench-{i:03d}" for i in range(listeners)]
    ids = {u: Pseudonymizer(secret).listener_id(u) for u in users}
    by_id = {listener: user for user, listener in ids.items()}
    requests, segments = Follower(kafka, "soundtrack.requests.v1"), Follower(kafka, "soundtrack.segments.v1")
    requests.start()
    segments.start()
    sim = {u: ListenerState(ids[u]) for u in users}
    sent: list[tuple[int, dict[str, Any]]] = []
    session = f"s-{uuid.uuid4().hex[:6]}"
    players, players_stop = [Player(u) for u in users], threading.Event()
    player_thread = threading.Thread(target=run_players, args=(pipeline, players, session, players_stop), daemon=True)
    player_thread.start()
    started = time.time()
    change_ms = walk_ms = 0
    while time.time() - started < rest_s + run_s + walk_s:
        now = int(time.time() * 1000)
        elapsed = time.time() - started
        running, walking = rest_s <= elapsed < rest_s + run_s, elapsed >= rest_s + run_s
        if running and not change_ms:
            change_ms = now
        if walking and not walk_ms:
            walk_ms = now
        sample = {"session_id": session, "event_time": now,
                  "heart_rate_bpm": 160 if running else 120 if walking else 70,
                  "cadence_spm": 170 if running else 105 if walking else None,
                  "activity": "RUNNING" if running else "WALKING" if walking else "RESTING",
                  "session_mode": "MATCH", "guide_target": "NONE"}
        post_samples(pipeline, users, sample)
        sent.append((now, sample))
        time.sleep(max(0.0, 1.0 - (time.time() - started) % 1.0))
    time.sleep(5)
    post_samples(pipeline, users, {**sample, "event_time": int(time.time() * 1000), "music": False})
    requests.stop.set()
    segments.stop.set()
    players_stop.set()
    player_thread.join(30)
    heard = hearing(players, change_ms, walk_ms, walk_ms + 5_000 + int(walk_s * 1000))

    # The design: replay the pure policy on the same samples at the same times, every 10 ms.
    designed: dict[str, int] = {}
    rest_tempo: dict[str, float] = {}
    for u in users:
        state, samples = sim[u], list(sent)
        t = samples[0][0]
        end = samples[-1][0]
        while t <= end and u not in designed:
            while samples and samples[0][0] <= t:
                state = observe(state, samples.pop(0)[1], t)
            state, due = due_requests(state, t)
            for r in due:
                if t < change_ms:
                    rest_tempo[u] = r["params"]["tempo_bpm"]
                elif r["params"]["tempo_bpm"] > rest_tempo.get(u, 0) * 1.02 and u not in designed:
                    designed[u] = t
            t += 10
    first_request: dict[str, tuple[int, int]] = {}  # listener -> (Kafka timestamp, sequence)
    for _, kafka_ts, value in requests.records:
        listener = by_id.get(value["listener_id"])
        if listener in designed and listener not in first_request and kafka_ts >= change_ms \
                and value["params"]["tempo_bpm"] > rest_tempo[listener] * 1.02:
            first_request[listener] = (kafka_ts, value["sequence"])
    first_ready: dict[str, int] = {}
    for arrived, _, value in segments.records:  # the segment answering that request (or a later one)
        listener = by_id.get(value["listener_id"])  # (not an earlier version of the same position)
        if listener in first_request and listener not in first_ready \
                and value["sequence"] >= first_request[listener][1] and arrived >= first_request[listener][0] \
                and value["params"]["tempo_bpm"] > rest_tempo[listener] * 1.02:
            first_ready[listener] = arrived
    request_delays = [first_request[u][0] - designed[u] for u in first_request]
    ready_delays = [first_ready[u] - designed[u] for u in first_ready]
    design_delays = [designed[u] - change_ms for u in designed]
    return {**heard, "listeners": listeners, "with_request": len(first_request), "with_segment": len(first_ready),
            "designed_delay_ms_median": statistics.median(design_delays) if design_delays else None,
            "request_delay_p50_ms": statistics.median(request_delays) if request_delays else None,
            "request_delay_p99_ms": p99(request_delays),
            "segment_ready_p50_ms": statistics.median(ready_delays) if ready_delays else None,
            "segment_ready_p99_ms": p99(ready_delays)}


def post_samples(pipeline: Pipeline, users: list[str], sample: dict[str, Any]) -> None:
    """Each listener's device posts its own sample with its own token."""
    for u in users:
        post(f"{pipeline.ingest_url}/v1/telemetry", pipeline.token(u), {"events": [
            {**{k: v for k, v in sample.items() if k not in ("session_mode", "guide_target")},
             "event_id": str(uuid.uuid4())}]})


def burst(pipeline: Pipeline, kind: str, listeners: int, before_s: float, after_s: float) -> dict[str, Any]:
    """``start``: every session starts in the same second and runs for ``after_s``. ``change``: the
    sessions start together at rest, rest for ``before_s``, then all start running in the same second
    for ``after_s`` (a class, a race start). Players as in the step change. Counted from the start (a
    change: from the change): late segments and dropped requests (underruns of admitted sessions: a
    refused session is told so and is not counted); over the whole scenario: sessions refused at
    capacity, listeners served, player underruns."""
    users = [f"{kind}-{i:03d}-{uuid.uuid4().hex[:4]}" for i in range(listeners)]
    session = f"{kind}-{uuid.uuid4().hex[:6]}"
    players, stop = [Player(u) for u in users], threading.Event()
    thread = threading.Thread(target=run_players, args=(pipeline, players, session, stop), daemon=True)
    late_before, missed_before = underruns(pipeline)
    refused_before = refusals(pipeline)
    thread.start()
    started = time.time()
    changed_ms = 0
    delays = [startup_delay_s(pipeline)]
    while time.time() - started < before_s + after_s:
        running = time.time() - started >= before_s
        if running and not changed_ms:
            changed_ms = int(time.time() * 1000)
            if before_s:  # a change: what the change causes, not the start before it
                late_before, missed_before = underruns(pipeline)
        post_samples(pipeline, users, {
            "session_id": session, "event_time": int(time.time() * 1000), "heart_rate_bpm": 160 if running else 70,
            "cadence_spm": 170 if running else None, "activity": "RUNNING" if running else "RESTING"})
        delays.append(startup_delay_s(pipeline))
        time.sleep(max(0.0, 1.0 - (time.time() - started) % 1.0))
    post_samples(pipeline, users, {"session_id": session, "event_time": int(time.time() * 1000),
                                   "heart_rate_bpm": 160, "cadence_spm": 170, "activity": "RUNNING", "music": False})
    time.sleep(8)  # the deadlines of what was requested last pass
    stop.set()
    thread.join(30)
    late, missed = underruns(pipeline)
    served = [p for p in players if p.slots]
    return {f"underruns_burst_{kind}": int(late - late_before + missed - missed_before),
            f"late_segments_burst_{kind}": int(late - late_before),
            f"dropped_requests_burst_{kind}": int(missed - missed_before),
            # AT_CAPACITY announcements: a refused listener is told again at each retry that is refused
            f"refusals_announced_burst_{kind}": int(refusals(pipeline) - refused_before),
            f"listeners_served_burst_{kind}": len(served),
            f"player_underruns_burst_{kind}": sum(p.underruns for p in players),
            # ran dry after the playlist said AT_CAPACITY (shed or refused): told, not an underrun
            f"player_gaps_after_refusal_burst_{kind}": sum(p.refused_gaps for p in players),
            f"player_swaps_burst_{kind}": sum(p.swaps for p in players),
            # what a new session waited for its first sound: at the burst's start, and its range
            f"startup_delay_s_burst_{kind}": [delays[0], min(delays), max(delays)]}


def steady(pipeline: Pipeline, listeners: int, window_s: float, warmup_s: float = 30.0) -> dict[str, Any]:
    """``listeners`` sessions start one every half second and run at a steady cadence (165 spm, +-2
    per sample, as a steady runner varies); after ``warmup_s`` more, over ``window_s``: underruns
    (late segments and dropped requests), player underruns, and the CPU of every pipeline process
    and the broker (one process each). ``listeners_per_core`` is the listeners served over the cores
    used, reported only when the window had no underrun of either kind and no refusal, with the
    broker measured (a local one; issue #16 point 7)."""
    users = [f"steady-{i:03d}-{uuid.uuid4().hex[:4]}" for i in range(listeners)]
    session = f"steady-{uuid.uuid4().hex[:6]}"
    players, stop = [Player(u, keep_audio=False) for u in users], threading.Event()
    thread = threading.Thread(target=run_players, args=(pipeline, players, session, stop), daemon=True)
    thread.start()
    refused_before = refusals(pipeline)
    started, window_at, before = time.time(), 0.0, {}
    rng = random.Random(7)
    while not window_at or time.time() - window_at < window_s:
        elapsed = time.time() - started
        if not window_at and elapsed >= listeners / 2 + warmup_s:
            window_at = time.time()
            before = {"underruns": underruns(pipeline), "players": sum(p.underruns for p in players),
                      "gaps": sum(p.refused_gaps for p in players), "refusals": refusals(pipeline),
                      "cpu": {name: cpu_seconds([pid]) for name, pid in pipeline.pids().items()}}
        for u in users[: min(listeners, int(elapsed * 2) + 1)]:
            post_samples(pipeline, [u], {"session_id": session, "event_time": int(time.time() * 1000),
                                         "heart_rate_bpm": 150, "cadence_spm": 165 + rng.randint(-2, 2),
                                         "activity": "RUNNING"})
        time.sleep(max(0.0, 0.5 - (time.time() - started) % 0.5) if elapsed < listeners / 2
                   else max(0.0, 1.0 - (time.time() - started) % 1.0))
    used = {name: cpu_seconds([pid]) - before["cpu"].get(name, 0.0) for name, pid in pipeline.pids().items()}
    window_end = time.time()
    seconds = window_end - window_at
    late, missed = underruns(pipeline)
    late, missed = int(late - before["underruns"][0]), int(missed - before["underruns"][1])
    # a player that ran dry and got nothing since only shows as an underrun at its next segment
    dry = sum(1 for p in players if p.next_start_s and p.next_start_s < window_end - 0.5)
    player_underruns = sum(p.underruns for p in players) - before["players"] + dry
    refused = int(refusals(pipeline) - before["refusals"]) + sum(p.refused_gaps for p in players) - before["gaps"]
    post_samples(pipeline, users, {"session_id": session, "event_time": int(time.time() * 1000),
                                   "heart_rate_bpm": 150, "cadence_spm": 165, "activity": "RUNNING", "music": False})
    stop.set()
    thread.join(30)
    cores = sum(used.values()) / seconds
    served = sum(1 for p in players  # a segment of theirs played in the window
                 if any(window_at * 1000 <= x.start_ms <= window_end * 1000 for x in p.played))
    clean = late + missed + player_underruns + refused == 0 and served == listeners and "broker" in used
    return {"steady_listeners": listeners, "steady_listeners_served": served, "steady_window_s": round(seconds, 1),
            "steady_late_segments": late, "steady_dropped_requests": missed,
            "steady_player_underruns": player_underruns,
            "steady_refusals_announced": int(refusals(pipeline) - refused_before),
            "steady_refusals_in_window": refused,
            "steady_cores": round(cores, 3),
            "steady_cores_by_process": {name: round(c / seconds, 3) for name, c in sorted(used.items())},
            "listeners_per_core": round(served / cores, 1) if clean and cores > 0 else None}


def hearing(players: list[Player], up_ms: int, down_ms: int, end_ms: int) -> dict[str, Any]:
    """What the players played: tempo measured from each played segment's audio, then the audible
    response to the step up (to 170 BPM) and the step down (to 105 BPM)."""
    misreads = sum(track_beats(player.played) for player in players)
    up = [audible(p.played, up_ms, down_ms, 170.0) for p in players]
    down = [audible(p.played, down_ms, end_ms, 105.0) for p in players]
    figures = {
        "audible_first_up_p95_s": p95([f for f, _ in up]), "audible_converged_up_p95_s": p95([c for _, c in up]),
        "audible_first_down_p95_s": p95([f for f, _ in down]),
        "audible_converged_down_p95_s": p95([c for _, c in down]),
        "audible_never_converged": sum(c is None for _, c in up + down),
        # every listener's (first, converged), slowest first: what a p95 over 20 listeners stands on
        "audible_up_by_listener_s": sorted(up, key=lambda fc: -max(v if v is not None else 1e9 for v in fc)),
        "audible_down_by_listener_s": sorted(down, key=lambda fc: -max(v if v is not None else 1e9 for v in fc)),
        "audible_first_up_p50_s": median([f for f, _ in up]), "audible_first_down_p50_s": median([f for f, _ in down]),
        # what the slowest listener of the step up played around it, to find why: (start after the
        # change, s; duration, s; requested tempo from -> to; measured first -> last beat tempo)
        "slowest_up_trace": trace(max(zip(up, players, strict=True), key=lambda fp: fp[0][1] or 1e9)[1], up_ms),
        "player_underruns": sum(p.underruns for p in players),
        "player_swaps": sum(p.swaps for p in players),  # replanned segments swapped in before they started
        # segments whose beats, measured from the audio, are more than 3% off their requested tempi
        "tempo_misreads": misreads,
        "segments_played": sum(len(p.played) for p in players),
    }
    both = [figures[f"audible_{kind}_{step}_p95_s"] for kind in ("first", "converged") for step in ("up", "down")]
    firsts, converged = both[:2], both[2:]
    figures["audible_first_p95_s"] = None if None in firsts else max(firsts)  # type: ignore[type-var]
    figures["audible_converged_p95_s"] = None if None in converged else max(converged)  # type: ignore[type-var]
    return figures


def trace(player: Player, change_ms: int) -> list[list[Any]]:
    return [[round((p.start_ms - change_ms) / 1000, 2), round(p.duration_ms / 1000, 2),
             round(p.params.get("tempo_from_bpm") or p.params["tempo_bpm"], 1), round(p.params["tempo_bpm"], 1),
             round(p.beats[0][1], 1) if p.beats else None, round(p.beats[-1][1], 1) if p.beats else None]
            for p in player.played if -8000 <= p.start_ms - change_ms <= 25000]


def metric(url: str, prefix: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(prefix):
                return float(line.split()[-1])
    return 0.0


def underruns(pipeline: Pipeline) -> tuple[float, float]:
    """Segments that reached a playlist after their deadline, and requests inference dropped as
    already too late (a gap the player cannot fill)."""
    late = metric(f"{pipeline.delivery_url}/metrics", 'entrain_soundtrack_buffer_underruns_total{source="server"}')
    missed = metric(f"http://127.0.0.1:{pipeline.ports['inference']}/metrics",
                    "entrain_inference_deadline_misses_total")
    return late, missed


def startup_delay_s(pipeline: Pipeline) -> float:
    """The worker's start-up delay for a new session now (measured from recent first segments)."""
    return metric(f"http://127.0.0.1:{pipeline.ports['soundtrack']}/metrics",
                  "entrain_soundtrack_startup_delay_seconds")


def refusals(pipeline: Pipeline) -> float:
    """AT_CAPACITY decisions inference announced (a session refused, or refused again after its retry)."""
    return metric(f"http://127.0.0.1:{pipeline.ports['inference']}/metrics",
                  'entrain_inference_admission_decisions_total{decision="AT_CAPACITY"}')


def throughput(pipeline: Pipeline, events: int, profile: bool = False) -> dict[str, Any]:
    kafka = pipeline.kafka
    for name in ("inference", "watermark"):
        pipeline.procs[name].terminate()
    spy = None
    if profile:  # py-spy samples the worker from outside (--nonblocking: it never pauses it)
        spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                                str(pipeline.procs["soundtrack"].pid), "--format", "raw", "--rate", "100",
                                "--nonblocking", "--full-filenames", "--output",
                                str(pipeline.workdir / "worker.prof")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    serde = TopicSerde.for_topic("listener.telemetry.v1", kafka)
    consumer = Consumer({**kafka.client_config(), "group.id": f"{kafka.topic_prefix}soundtrack"})
    parts = [TopicPartition(serde.topic, p) for p in range(serde.contract.partitions)]

    def committed_total() -> int:
        return sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10))

    before = committed_total()
    producer = Producer(kafka, "bench")
    now = int(time.time() * 1000)
    started = time.perf_counter()
    for i in range(events):
        listener = f"{i % 2000:064x}"
        producer.produce(serde, {"listener_id": listener}, {
            "event_id": str(uuid.uuid4()), "listener_id": listener, "session_id": "burst", "event_time": now + i,
            "received_time": now + i, "heart_rate_bpm": 150, "cadence_spm": 170, "activity": "RUNNING",
            "session_mode": "MATCH", "guide_target": "NONE", "device": None})
    producer.flush(60)
    produced_s = time.perf_counter() - started
    while committed_total() < before + events:
        if time.perf_counter() - started > 600:
            raise RuntimeError("the worker did not catch up within 10 minutes")
        time.sleep(0.25)
    worker_s = time.perf_counter() - started
    consumer.close()
    shares = {}
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
        spy.wait(60)
        shares = {"worker_profile": worker_profile(pipeline.workdir / "worker.prof")}

    raw = Consumer({**kafka.client_config(), "group.id": f"raw-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
                    "enable.auto.commit": False})
    raw.assign([TopicPartition(serde.topic, p, 0) for p in range(serde.contract.partitions)])
    seen, started = 0, time.perf_counter()
    total_on_topic = before + events
    while seen < total_on_topic:
        for msg in raw.consume(1000, 1.0):
            if msg.error() is None:
                serde.decode_key(msg.key())
                serde.decode_value(msg.value())
                seen += 1
    raw_s = time.perf_counter() - started
    raw.close()
    faust_rate = faust_ceiling(pipeline, total_on_topic)
    return {"events": events, "produce_s": round(produced_s, 2), "telemetry_events_s": round(events / worker_s),
            "raw_decode_events_s": round(total_on_topic / raw_s),
            "worker_vs_raw_decode": round((events / worker_s) / (total_on_topic / raw_s), 3),
            "faust_decode_only_events_s": round(faust_rate),
            "worker_vs_faust_decode_only": round((events / worker_s) / faust_rate, 3), **shares}


# Where a sample's innermost frame is, by the file it is in: whose code the worker's CPU runs.
PROFILE_PARTS = (("faust", "/faust/"), ("mode (faust's services)", "/mode/"), ("aiokafka", "/aiokafka/"),
                 ("avro decode/encode", "fastavro"), ("kit", "/kit/"), ("soundtrack (ours)", "/soundtrack/"),
                 ("asyncio", "/asyncio/"))


def worker_profile(path: Path) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks of the worker: the share of on-CPU samples whose innermost
    frame is in each package (self time), and the share spent anywhere under the telemetry agent,
    in aiokafka's producer (requests and changelog writes) and in Faust's transport (its consumer,
    fetcher, producer and commits around aiokafka) (inclusive)."""
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append((frames.split(";"), int(count)))
    total = sum(n for _, n in stacks) or 1
    self_share: dict[str, float] = {}
    for frames, n in stacks:
        part = next((name for name, marker in PROFILE_PARTS if marker in frames[-1]), "other (stdlib, C)")
        self_share[part] = self_share.get(part, 0) + n / total

    def under(test: Any) -> float:
        return round(sum(n for frames, n in stacks if any(test(f) for f in frames)) / total, 3)

    return {"samples": total, "self": {k: round(v, 3) for k, v in sorted(self_share.items(), key=lambda kv: -kv[1])},
            "under_on_telemetry": under(lambda f: f.startswith("on_telemetry ")),
            "under_aiokafka_producer": under(lambda f: "/aiokafka/producer/" in f),
            "under_faust_transport": under(lambda f: "/faust/transport/" in f)}


def faust_ceiling(pipeline: Pipeline, total: int) -> float:
    """Events/s of bench/faust_ceiling.py over everything on the telemetry topic: from its first
    offset commit (its start and group join excluded; the events that commit covers are not
    counted) until its commits cover the topic, with the same 1 s commit interval as the worker."""
    kafka = pipeline.kafka
    serde = TopicSerde.for_topic("listener.telemetry.v1", kafka)
    group = f"{kafka.topic_prefix}faust-ceiling"
    env = {**pipeline.env(), "FAUST_CEILING_APP_ID": group,
           "FAUST_CEILING_DATADIR": str(pipeline.workdir / "faust-ceiling")}
    with open(pipeline.workdir / "faust-ceiling.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "bench" / "faust_ceiling.py")], env=env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    consumer = Consumer({**kafka.client_config(), "group.id": group})
    parts = [TopicPartition(serde.topic, p) for p in range(serde.contract.partitions)]
    try:
        first = None
        while True:
            done = sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10))
            if done and first is None:
                first = (time.perf_counter(), done)  # timed from its first commit: the join is excluded
            if done >= total:
                break
            if proc.poll() is not None:
                log_text = (pipeline.workdir / "faust-ceiling.log").read_text()
                raise RuntimeError(f"faust_ceiling.py exited: {log_text[-2000:]}")
            time.sleep(0.1)
        assert first is not None
        elapsed = time.perf_counter() - first[0]
        return (total - first[1]) / elapsed if elapsed > 0 else float("inf")
    finally:
        proc.terminate()
        proc.wait(30)
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listeners", type=int, default=20)
    parser.add_argument("--rest-s", type=float, default=20)
    parser.add_argument("--run-s", type=float, default=40)
    parser.add_argument("--walk-s", type=float, default=30)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--burst-listeners", type=int, default=100)
    parser.add_argument("--burst-before-s", type=float, default=30, help="steady state before the change burst")
    parser.add_argument("--burst-after-s", type=float, default=30)
    parser.add_argument("--steady-listeners", type=int, default=30, help="generating listeners in the steady window")
    parser.add_argument("--steady-s", type=float, default=300, help="the steady window (listeners_per_core)")
    parser.add_argument("--only-throughput", action="store_true", help="phase 2 only (make profile-worker)")
    parser.add_argument("--profile", action="store_true", help="sample the worker with py-spy in phase 2")
    args = parser.parse_args()
    kafka = replace(KafkaSettings.from_env(), topic_prefix=f"bench-adapt-{uuid.uuid4().hex[:6]}.")
    ensure_topics(kafka)
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = Pipeline(kafka, Path(tmp)).start()
        try:
            if args.only_throughput:
                rate = throughput(pipeline, args.events, args.profile)
                print("RESULT " + json.dumps(rate))
                return
            late_before, missed_before = underruns(pipeline)
            step = step_change(pipeline, args.listeners, args.rest_s, args.run_s, args.walk_s)
            late, missed = underruns(pipeline)
            step["late_segments"], step["dropped_requests"] = int(late - late_before), int(missed - missed_before)
            step["underruns"] = step["late_segments"] + step["dropped_requests"]
            print(f"step change, {args.listeners} listeners: {json.dumps(step)}")
            time.sleep(15)  # their last requests drain; inference forgets them as active sessions
            bursts = {}
            for kind, before in (("start", 0.0), ("change", args.burst_before_s)):
                bursts |= burst(pipeline, kind, args.burst_listeners, before, args.burst_after_s)
                print(f"burst {kind}, {args.burst_listeners} listeners: "
                      f"{json.dumps({k: v for k, v in bursts.items() if k.endswith(kind)})}")
                time.sleep(15)
            steadily = steady(pipeline, args.steady_listeners, args.steady_s)
            print(f"steady, {args.steady_listeners} listeners: {json.dumps(steadily)}")
            time.sleep(15)
            rate = throughput(pipeline, args.events, args.profile)
            print(f"one soundtrack worker: {json.dumps(rate)}")
        finally:
            pipeline.stop()
            delete_prefixed_topics(kafka)
    result = {"hold_ms_by_design": HOLD_MS, **step, **bursts, **steadily, **rate}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
