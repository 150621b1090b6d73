"""Per-listener state and the request scheduler. Pure: the clock is passed in.

A listener's state folds telemetry (``observe``) and, when asked (``due_requests``),
emits the segment requests that keep them SEGMENTS_AHEAD segments ahead of playback.
Playback is assumed continuous from the session's first request; a segment lasts
SEGMENT_BARS bars, one bar up to SHORT_SEGMENT_MAX_BPM (so a change reaches the ear sooner at
slow tempos; a bar there is >= 2.2 s, more than the watermark's 1.9 s block), and glides beat
by beat from the tempo the segment before it ended at to its own (``kit.tempo``).
Every request carries the policy's parameters for that point in time, so a change reaches
the next request. Request ids derive from (listener, session, sequence), and for a replanned one
also the revision and the request it continues: a replay after a crash emits the same ids for the
same requests (idempotent downstream), and the segment id inference gives a
request is known in advance, so a request can name the segment it continues.

The lookahead is revocable. The state remembers the segments it planned that have not started
(``ahead``), with the policy state each was planned from. When the body asks for music that a
re-plan of the first of them that can still be remade in time (``REVISE_LEAD_MS`` before its
start) would play more than ``REVISE_MIN_CHANGE`` faster or slower, the plan from there on is
made again under a new revision: new requests for the same sequence positions, with their own
request ids (and so their own segment ids: one id still names one audio), each continuing the
segment before it; at most one revision every REVISE_EVERY_MS. Delivery lists the newest
request of a position; a player swaps a segment it
has not started for its replacement (see delivery.playlists).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from kit.deadlines import PLAYER_MARGIN_MS
from kit.tempo import duration_ms
from soundtrack.policy import Body, Music, Playing, advance, body_update, target
from soundtrack.startup import DEFAULT_MS as DEFAULT_STARTUP_MS

SEGMENT_BARS = 2  # short segments: a change of the body reaches the plan at the next boundary
SHORT_SEGMENT_MAX_BPM = 110.0
SEGMENTS_AHEAD = 2
NEVER_MS = 2**62
T = TypeVar("T")
IDLE_MS = 60_000  # no telemetry for a minute: stop generating
DEADLINE_MARGIN_MS = PLAYER_MARGIN_MS  # a segment must exist this long (1.5 s) before it starts playing
REVISE_LEAD_MS = DEADLINE_MARGIN_MS + 2_000  # a replacement is asked for only this long before its start:
# generation plus watermarking must fit before its deadline also when every listener changes at once (a
# burst: with 1 s here, make bench-adapt's 20 simultaneous changes made segments late). One that comes late
# is no underrun (the version it replaces is there to play, see delivery.playlists), but it is wasted work.
REVISE_MIN_CHANGE = 0.03  # within 3% (the dead band) a planned segment stays
REVISE_EVERY_MS = 5_000  # at most one revision this often: a body (or a client) flipping between states
# cannot make inference render the buffer again on every sample (at most ~3 extra segments per 5 s)


@dataclass(frozen=True)
class Ahead:
    """A planned segment, as planned: where it starts, and the policy state it was planned from."""

    sequence: int
    start_ms: int
    end_ms: int
    tempo_bpm: float
    request_id: str
    previous_id: str | None  # the request it continues
    before: Playing


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
    revision: int = 0  # how often this session's plan was made again (part of later request ids)
    revised_at_ms: int = -REVISE_EVERY_MS  # wall time of the last revision
    last_request_id: str | None = None  # the newest request: the next one continues it
    ahead: tuple[Ahead, ...] = ()  # planned segments that have not ended, in order

    def to_dict(self) -> dict[str, Any]:
        """``dataclasses.asdict``, spelled out: it runs once per changed listener per commit, and
        asdict's generic recursion was most of the worker's cost of writing state."""
        return {**vars(self), "body": dict(vars(self.body)), "playing": _playing_dict(self.playing),
                "ahead": tuple({**vars(a), "before": _playing_dict(a.before)} for a in self.ahead)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ListenerState:
        return cls(
            listener_id=data["listener_id"], session_id=data["session_id"], body=known(Body, data["body"]),
            playing=_playing_from(data["playing"]),
            key_tonic=data["key_tonic"], next_sequence=data["next_sequence"],
            scheduled_until_ms=data["scheduled_until_ms"], last_seen_ms=data["last_seen_ms"],
            music=data.get("music", True), revision=data.get("revision", 0),
            revised_at_ms=data.get("revised_at_ms", -REVISE_EVERY_MS),
            # a state written before revisions existed: its last request was revision 0's
            last_request_id=data["last_request_id"] if "last_request_id" in data else (
                request_id(data["listener_id"], data["session_id"], data["next_sequence"] - 1)
                if data["next_sequence"] > 0 else None),
            ahead=tuple(known(Ahead, {**a, "before": _playing_from(a["before"])}) for a in data.get("ahead", ())),
        )


def _playing_dict(playing: Playing) -> dict[str, Any]:
    return {**vars(playing), "music": dict(vars(playing.music)),
            "pending": dict(vars(playing.pending)) if playing.pending else None}


def _playing_from(data: dict[str, Any]) -> Playing:
    return Playing(known(Music, data["music"]), known(Music, data["pending"]) if data["pending"] else None,
                   data["pending_since_ms"], data["mood_since_ms"], int(data["ramping"]),
                   data.get("mood_wish_since_ms", -1))


def known(kind: type[T], data: dict[str, Any]) -> T:
    """A dataclass from stored fields, ignoring fields this version does not know (state written by a
    newer worker during a rolling deploy or before a rollback); missing ones take their defaults."""
    names = {f.name for f in fields(kind)}  # type: ignore[arg-type]
    return kind(**{k: v for k, v in data.items() if k in names})


def request_id(listener_id: str, session_id: str, sequence: int, revision: int = 0, previous: str | None = None) -> str:
    """A replanned request's id also names the request it continues: a replay after a crash that
    replans at another point (the clock decides) makes new ids, never one id for two requests."""
    name = f"{listener_id}\x00{session_id}\x00{sequence}" + (f"\x00r{revision}\x00{previous}" if revision else "")
    return "req-" + hashlib.sha256(name.encode()).hexdigest()[:24]


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


def segment_ms(tempo_bpm: float, bars: int | None = None, tempo_from: float | None = None) -> int:
    """How long a segment plays (gliding from ``tempo_from``: ``kit.tempo``, as the renderer does)."""
    return duration_ms(tempo_bpm, bars or bars_for(tempo_bpm), tempo_from)


def step(playing: Playing, wish: Music, policy_ms: int) -> tuple[Playing, int]:
    """The next segment's policy state and its bars: one bar up to SHORT_SEGMENT_MAX_BPM, else two,
    judged on the tempo it ends up at (a fast ramp out of the 1-bar range takes two bars, so no segment
    is shorter than a bar at that limit, ~2.2 s, above the watermark's minimum)."""
    bars = bars_for(playing.music.tempo_bpm)
    after = advance(playing, wish, policy_ms, bars)
    if bars_for(after.music.tempo_bpm) > bars:
        bars = bars_for(after.music.tempo_bpm)
        after = advance(playing, wish, policy_ms, bars)
    return after, bars


def revise(state: ListenerState, wish: Music, policy_ms: int, now_ms: int) -> ListenerState:
    """Forget planned segments that have ended; and when ``wish`` would change the first planned
    segment that can still be remade in time, rewind the plan to just before it (a new revision):
    ``due_requests`` then plans from there again."""
    ahead = tuple(a for a in state.ahead if a.end_ms > now_ms)
    first = next((i for i, a in enumerate(ahead) if a.start_ms - now_ms >= REVISE_LEAD_MS), None)
    if first is not None and now_ms - state.revised_at_ms >= REVISE_EVERY_MS:
        a = ahead[first]
        replanned = step(a.before, wish, policy_ms)[0].music.tempo_bpm
        if abs(replanned - a.tempo_bpm) > REVISE_MIN_CHANGE * a.tempo_bpm:
            return replace(state, playing=a.before, next_sequence=a.sequence, scheduled_until_ms=a.start_ms,
                           revision=state.revision + 1, revised_at_ms=now_ms, last_request_id=a.previous_id,
                           ahead=ahead[:first])
    return state if len(ahead) == len(state.ahead) else replace(state, ahead=ahead)


def due_requests(state: ListenerState, now_ms: int,
                 startup_ms: int = DEFAULT_STARTUP_MS) -> tuple[ListenerState, list[dict[str, Any]]]:
    """Requests needed now to stay SEGMENTS_AHEAD segments ahead (after revising the plan, see
    ``revise``); none for an idle listener or one whose player wants no music (a later ``music``
    sample restarts playback). A new (or resumed) session starts playing ``startup_ms`` after its
    first request (``soundtrack.startup``: measured from recent first segments)."""
    if not state.session_id or not state.music or now_ms - state.last_seen_ms > IDLE_MS:
        return state, []
    # Policy time is event time: the newest sample's time, moved on by the wall time since it
    # arrived (so silence is noticed, while late samples never move it back).
    policy_ms = state.body.last_event_ms + max(0, now_ms - state.last_seen_ms)
    wish = target(state.body, policy_ms)
    state = revise(state, wish, policy_ms, now_ms)
    requests: list[dict[str, Any]] = []
    ahead = list(state.ahead)
    scheduled, playback = state.scheduled_until_ms, now_ms
    if scheduled < now_ms:  # a new session, or playback ran dry: (re)start shortly, two segments ready
        scheduled = playback = now_ms + startup_ms
    playing, previous = state.playing, state.last_request_id
    while scheduled < playback + SEGMENTS_AHEAD * segment_ms(playing.music.tempo_bpm):
        before = playing
        playing, bars = step(playing, wish, policy_ms)  # the ramp allowance and the segment agree
        music = playing.music
        tempo = round(music.tempo_bpm, 3)
        # A segment continuing another glides from where that one ended, so the tempo moves every beat.
        glide = round(before.music.tempo_bpm, 3) if previous is not None else None
        glide = None if glide == tempo else glide
        sequence = state.next_sequence + len(requests)
        rid = request_id(state.listener_id, state.session_id, sequence, state.revision, previous)
        requests.append({
            "request_id": rid, "listener_id": state.listener_id, "session_id": state.session_id,
            "sequence": sequence, "previous_segment_id": segment_id(previous) if previous else None,
            "params": {"tempo_bpm": tempo, "energy": music.energy, "mode": music.mode,
                       "key_tonic": state.key_tonic, "bars": bars, "tempo_from_bpm": glide},
            "seed": seed_of(rid), "requested_at": now_ms,
            "deadline": max(scheduled - DEADLINE_MARGIN_MS, now_ms + 500), "policy_reason": music.reason,
        })
        length = segment_ms(tempo, bars, glide)
        ahead.append(Ahead(sequence, scheduled, scheduled + length, music.tempo_bpm, rid, previous, before))
        previous = rid
        scheduled += length
    if not requests:
        return state, []
    return replace(state, playing=playing, next_sequence=state.next_sequence + len(requests),
                   scheduled_until_ms=scheduled, last_request_id=previous, ahead=tuple(ahead)), requests
