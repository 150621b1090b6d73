"""Per-listener state and the request scheduler. Pure: the clock is passed in.

A listener's state folds telemetry (``observe``) and, when asked (``due_requests``),
emits the segment requests that keep them SEGMENTS_AHEAD segments ahead of playback.
Playback is assumed continuous from the session's first request; a segment lasts
SEGMENT_BARS bars at its tempo, one bar up to SHORT_SEGMENT_MAX_BPM (so a change reaches the
ear sooner at slow tempos; a bar there is >= 2.2 s, more than the watermark's 1.9 s block).
Every request carries the policy's parameters for that point in time, so a change reaches
the next request. Request ids derive from (listener, session, sequence): a replay after a
crash emits the same ids (idempotent downstream), and the segment id inference gives a
request is known in advance, so a request can name the segment it continues.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from soundtrack.policy import Body, Music, Playing, advance, body_update, target

SEGMENT_BARS = 2  # short segments: the tempo may change (at most 3% per bar) at every segment boundary
SHORT_SEGMENT_MAX_BPM = 110.0
SEGMENTS_AHEAD = 2
NEVER_MS = 2**62
T = TypeVar("T")
IDLE_MS = 60_000  # no telemetry for a minute: stop generating
DEADLINE_MARGIN_MS = 1_500  # a segment must exist this long before it starts playing
STARTUP_MS = 4_000  # a new (or resumed) session starts playing this long after its first request
# (generation plus watermarking of the first two segments must fit, also when many sessions start at once)


@dataclass(frozen=True)
class ListenerState:
    listener_id: str
    session_id: str = ""
    body: Body = field(default_factory=Body)
    playing: Playing = field(default_factory=lambda: Playing(Music(90.0, 0.4, "MAJOR", "start")))
    key_tonic: int = 0
    next_sequence: int = 0
    scheduled_until_ms: int = 0  # wall time up to which audio has been requested
    last_seen_ms: int = 0  # wall time of the newest telemetry
    music: bool = True  # the player wants music (telemetry's ``music``); false: track the body only

    def to_dict(self) -> dict[str, Any]:
        """``dataclasses.asdict``, spelled out: it runs once per changed listener per commit, and
        asdict's generic recursion was most of the worker's cost of writing state."""
        playing = self.playing
        return {**vars(self), "body": dict(vars(self.body)),
                "playing": {**vars(playing), "music": dict(vars(playing.music)),
                            "pending": dict(vars(playing.pending)) if playing.pending else None}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ListenerState:
        playing = data["playing"]
        return cls(
            listener_id=data["listener_id"], session_id=data["session_id"], body=known(Body, data["body"]),
            playing=Playing(known(Music, playing["music"]),
                            known(Music, playing["pending"]) if playing["pending"] else None,
                            playing["pending_since_ms"], playing["mood_since_ms"], int(playing["ramping"]),
                            playing.get("mood_wish_since_ms", -1)),
            key_tonic=data["key_tonic"], next_sequence=data["next_sequence"],
            scheduled_until_ms=data["scheduled_until_ms"], last_seen_ms=data["last_seen_ms"],
            music=data.get("music", True),
        )


def known(kind: type[T], data: dict[str, Any]) -> T:
    """A dataclass from stored fields, ignoring fields this version does not know (state written by a
    newer worker during a rolling deploy or before a rollback); missing ones take their defaults."""
    names = {f.name for f in fields(kind)}  # type: ignore[arg-type]
    return kind(**{k: v for k, v in data.items() if k in names})


def request_id(listener_id: str, session_id: str, sequence: int) -> str:
    return "req-" + hashlib.sha256(f"{listener_id}\x00{session_id}\x00{sequence}".encode()).hexdigest()[:24]


def segment_id(request: str) -> str:
    """The id inference gives the segment answering ``request`` (see inference.service)."""
    return "seg-" + hashlib.sha256(request.encode()).hexdigest()[:24]


def seed_of(request: str) -> int:
    return int.from_bytes(hashlib.sha256(request.encode()).digest()[:6], "big")


def observe(state: ListenerState, telemetry: dict[str, Any], now_ms: int) -> ListenerState:
    """Fold one telemetry record (listener.telemetry.v1 value) into the state."""
    if telemetry["session_id"] != state.session_id:  # a new session starts from scratch, same listener
        key = int(hashlib.sha256(state.listener_id.encode()).hexdigest(), 16) % 12
        state = ListenerState(state.listener_id, telemetry["session_id"], key_tonic=key)
    # A sample cannot have happened after ingest received it: a device clock running ahead (or a
    # hostile client dating a sample minutes ahead) would otherwise make every real sample look
    # older than the newest applied one, and freeze the listener's music until that time came.
    event_ms = min(telemetry["event_time"], telemetry.get("received_time") or telemetry["event_time"])
    body = body_update(state.body, event_ms, telemetry["heart_rate_bpm"], telemetry["cadence_spm"],
                       telemetry["activity"], telemetry["session_mode"], telemetry["guide_target"])
    return replace(state, body=body, last_seen_ms=max(state.last_seen_ms, now_ms),
                   music=telemetry.get("music", True))


def next_due_ms(state: ListenerState) -> int:
    """When the listener next needs a request (the scheduler's timer compares only this);
    never while their player wants no music (their next telemetry recomputes it)."""
    if not state.music:
        return NEVER_MS
    return state.scheduled_until_ms - SEGMENTS_AHEAD * segment_ms(state.playing.music.tempo_bpm)


def bars_for(tempo_bpm: float) -> int:
    return 1 if tempo_bpm <= SHORT_SEGMENT_MAX_BPM else SEGMENT_BARS


def segment_ms(tempo_bpm: float, bars: int | None = None) -> int:
    return round((bars or bars_for(tempo_bpm)) * 4 * 60_000 / tempo_bpm)


def due_requests(state: ListenerState, now_ms: int) -> tuple[ListenerState, list[dict[str, Any]]]:
    """Requests needed now to stay SEGMENTS_AHEAD segments ahead; none for an idle listener
    or one whose player wants no music (a later ``music`` sample restarts playback)."""
    if not state.session_id or not state.music or now_ms - state.last_seen_ms > IDLE_MS:
        return state, []
    requests: list[dict[str, Any]] = []
    scheduled, playback = state.scheduled_until_ms, now_ms
    if scheduled < now_ms:  # a new session, or playback ran dry: (re)start shortly, two segments ready
        scheduled = playback = now_ms + STARTUP_MS
    playing = state.playing
    # Policy time is event time: the newest sample's time, moved on by the wall time since it
    # arrived (so silence is noticed, while late samples never move it back).
    policy_ms = state.body.last_event_ms + max(0, now_ms - state.last_seen_ms)
    while scheduled < playback + SEGMENTS_AHEAD * segment_ms(playing.music.tempo_bpm):
        bars = bars_for(playing.music.tempo_bpm)  # the ramp allowance and the segment agree
        playing = advance(playing, target(state.body, policy_ms), policy_ms, bars)
        music = playing.music
        sequence = state.next_sequence + len(requests)
        rid = request_id(state.listener_id, state.session_id, sequence)
        previous = request_id(state.listener_id, state.session_id, sequence - 1) if sequence else None
        requests.append({
            "request_id": rid, "listener_id": state.listener_id, "session_id": state.session_id,
            "sequence": sequence, "previous_segment_id": segment_id(previous) if previous else None,
            "params": {"tempo_bpm": round(music.tempo_bpm, 3), "energy": music.energy, "mode": music.mode,
                       "key_tonic": state.key_tonic, "bars": bars},
            "seed": seed_of(rid), "requested_at": now_ms,
            "deadline": max(scheduled - DEADLINE_MARGIN_MS, now_ms + 500), "policy_reason": music.reason,
        })
        scheduled += segment_ms(music.tempo_bpm, bars)
    return replace(state, playing=playing, next_sequence=state.next_sequence + len(requests),
                   scheduled_until_ms=scheduled), requests
