"""The scheduler keeps listeners two segments ahead, with deterministic, continuing requests."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from soundtrack.policy import HOLD_MS, big_step
from soundtrack.schedule import (
    IDLE_MS,
    NEVER_MS,
    REVISE_LEAD_MS,
    SEGMENT_BARS,
    SEGMENTS_AHEAD,
    ListenerState,
    due_requests,
    next_due_ms,
    observe,
    request_id,
    segment_id,
    segment_ms,
)

T0 = 1_800_000_000_000


def sample(at: int, hr: int = 150, cadence: int | None = 168, session: str = "s-1") -> dict[str, Any]:
    return {"session_id": session, "event_time": at, "heart_rate_bpm": hr, "cadence_spm": cadence,
            "activity": "RUNNING", "session_mode": "MATCH", "guide_target": "NONE"}


def test_a_new_listener_gets_two_segments_ahead_and_no_more() -> None:
    state = observe(ListenerState("l1"), sample(T0), T0)
    state, requests = due_requests(state, T0)
    assert len(requests) >= SEGMENTS_AHEAD
    assert [r["sequence"] for r in requests] == list(range(len(requests)))
    assert requests[0]["previous_segment_id"] is None
    assert requests[1]["previous_segment_id"] == segment_id(requests[0]["request_id"])
    assert all(r["deadline"] > T0 for r in requests)
    assert due_requests(state, T0)[1] == []  # already ahead


def test_requests_continue_as_playback_advances_and_are_deterministic() -> None:
    state = observe(ListenerState("l1"), sample(T0), T0)
    state, first = due_requests(state, T0)
    later = T0 + 3 * segment_ms(90)
    state = observe(state, sample(T0 + 2000), later)
    state, more = due_requests(state, later)
    assert more and more[0]["sequence"] == len(first)
    assert more[0]["request_id"] == request_id("l1", "s-1", len(first))
    replay = observe(ListenerState("l1"), sample(T0), T0)
    assert due_requests(replay, T0)[1] == first  # same inputs, same requests


def test_the_tempo_moves_toward_the_cadence_in_small_steps() -> None:
    state = observe(ListenerState("l1"), sample(T0, cadence=170), T0)
    tempos, now = [], T0
    for n in range(1, 120):
        state = observe(state, sample(T0 + n * 1000, cadence=170), now)
        state, requests = due_requests(state, now)
        tempos += [r["params"]["tempo_bpm"] for r in requests]
        now += 1000
    assert tempos[-1] == 170
    assert all(b / a <= (1 + big_step(a)) ** SEGMENT_BARS + 1e-4 for a, b in itertools.pairwise(tempos))  # 10%/s
    assert max(b / a for a, b in itertools.pairwise(tempos)) > 1.05  # and it uses the whole 2-bar allowance


def test_a_runner_who_stops_hears_it_within_seconds() -> None:
    """Running at 165 spm, then walking at 105: the requested tempo is within 3% of 105 less than 12 s
    after the first walking sample (samples every 2 s, as the demo's watch sends them)."""
    state, now = ListenerState("l1"), T0
    for n in range(30):
        state = observe(state, sample(T0 + n * 2000, cadence=165 + n % 2), now)
        state, _ = due_requests(state, now)
        now += 2000
    stopped_at, reached = now, None
    for n in range(30, 60):
        state = observe(state, sample(T0 + n * 2000, cadence=105 - n % 2), now)
        state, requests = due_requests(state, now)
        if reached is None and any(abs(r["params"]["tempo_bpm"] / 104.5 - 1) <= 0.03 for r in requests):
            reached = now - stopped_at
        now += 2000
    assert reached is not None and reached < 12_000


def test_a_ramp_follows_a_steadily_rising_cadence_without_stalling() -> None:
    state = observe(ListenerState("l1"), sample(T0, cadence=110), T0)
    planned: dict[int, float] = {}  # sequence -> tempo of its newest request (what plays)
    changed_at, now = None, T0
    for n in range(1, 90):  # cadence climbs 110 -> 170 over 30 s, then stays
        state = observe(state, sample(T0 + n * 1000, cadence=min(170, 110 + 2 * n)), now)
        state, requests = due_requests(state, now)
        planned |= {r["sequence"]: r["params"]["tempo_bpm"] for r in requests}
        if changed_at is None and len(set(planned.values())) > 1:
            changed_at = n
        now += 1000
    tempos = [planned[k] for k in sorted(planned)]
    # the wish to go faster is sustained from the first sample: the change starts after the
    # hold plus at most one segment, not when the cadence stops rising
    assert changed_at is not None and changed_at * 1000 <= HOLD_MS + 6_000
    start = tempos.index(next(t for t in tempos if t != tempos[0]))
    climb = tempos[start - 1:tempos.index(max(tempos)) + 1]
    # no stalls: at most two positions repeat a tempo (planned while the slowly rising wish was inside the
    # dead band, and not replanned because revisions are rate-limited)
    assert all(b >= a for a, b in itertools.pairwise(climb)) and len(set(climb)) >= len(climb) - 2
    assert max(tempos) == pytest.approx(170, abs=0.1)


def test_idle_listeners_get_nothing_and_a_new_session_starts_over() -> None:
    state = observe(ListenerState("l1"), sample(T0), T0)
    state, _ = due_requests(state, T0)
    assert due_requests(state, T0 + IDLE_MS + 1)[1] == []
    restarted = observe(state, sample(T0 + 5000, session="s-2"), T0 + 5000)
    assert restarted.next_sequence == 0 and restarted.session_id == "s-2"


def test_a_paused_player_gets_no_segments_and_resumes_with_a_fresh_start() -> None:
    state = observe(ListenerState("l1"), sample(T0), T0)
    state, first = due_requests(state, T0)
    paused = observe(state, {**sample(T0 + 1000), "music": False}, T0 + 1000)
    assert due_requests(paused, T0 + 30_000)[1] == [] and next_due_ms(paused) == NEVER_MS
    resumed = observe(paused, sample(T0 + 31_000), T0 + 31_000)
    resumed, again = due_requests(resumed, T0 + 31_000)
    assert again[0]["sequence"] == len(first)  # the session continues where it stopped
    assert again[0]["deadline"] > T0 + 31_000 and len(again) >= SEGMENTS_AHEAD


def test_state_round_trips_through_its_dict_form() -> None:
    state = observe(ListenerState("l1"), sample(T0), T0)
    state, _ = due_requests(state, T0)
    assert ListenerState.from_dict(state.to_dict()) == state


def test_the_dict_form_is_what_asdict_gives() -> None:
    """to_dict is asdict spelled out for speed: it must stay the same as fields are added."""
    from dataclasses import asdict

    state = observe(ListenerState("l1"), sample(T0), T0)
    for n in range(1, 30):  # a step change leaves a pending change in the state
        state, _ = due_requests(observe(state, sample(T0 + n * 1000, cadence=110), T0 + n * 1000), T0 + n * 1000)
        assert state.to_dict() == asdict(state)
    assert ListenerState("l2").to_dict() == asdict(ListenerState("l2"))


def test_one_sample_dated_minutes_ahead_cannot_freeze_the_policy() -> None:
    state = observe(ListenerState("l1"), {**sample(T0, cadence=110), "received_time": T0}, T0)
    future = {**sample(T0 + 120_000, cadence=112), "received_time": T0 + 1000}  # "2 minutes from now"
    state = observe(state, future, T0 + 1000)
    for n in range(2, 40):  # the runner speeds up; the real samples must still count
        now = T0 + n * 1000
        state = observe(state, {**sample(now, cadence=170), "received_time": now}, now)
    assert state.body.cadence is not None and state.body.cadence > 160
    assert state.body.last_event_ms <= T0 + 39_000


def test_state_from_another_version_loads() -> None:
    """Fields a newer worker wrote are ignored, missing ones default (rolling deploys, rollbacks)."""
    state = observe(ListenerState("l1"), sample(T0), T0)
    stored = state.to_dict()
    stored["body"]["from_the_future"] = 1
    stored["playing"]["music"]["also_new"] = "x"
    del stored["body"]["cadence_changed_ms"]
    loaded = ListenerState.from_dict(stored)
    assert loaded.body.cadence_changed_ms == -1 and loaded.playing.music == state.playing.music


def running(seconds: int = 40) -> tuple[ListenerState, dict[int, dict[str, Any]], int]:
    """A runner at 170 spm for ``seconds`` (a sample a second): the state, every request by
    sequence as first asked, and the time."""
    state, now, first = ListenerState("l1"), T0, {}
    for n in range(seconds):
        state, requests = due_requests(observe(state, sample(T0 + n * 1000, cadence=170), now), now)
        first |= {r["sequence"]: r for r in requests if r["sequence"] not in first}
        now += 1000
    return state, first, now


def test_a_change_replans_the_buffered_future_under_new_ids() -> None:
    replanned = 0
    for seconds in range(40, 44):  # the stop falls at different points of the segment grid
        state, first, now = running(seconds)
        before = {a.sequence: a for a in state.ahead}
        replaced: list[dict[str, Any]] = []
        for n in range(seconds, seconds + 3):  # two agreeing walking readings confirm the stop
            state, requests = due_requests(observe(state, sample(T0 + n * 1000, cadence=105), now), now)
            replaced = [r for r in requests
                        if r["sequence"] in first and r["request_id"] != first[r["sequence"]]["request_id"]]
            if replaced:
                break
            first |= {r["sequence"]: r for r in requests}
            before = {a.sequence: a for a in state.ahead}
            now += 1000
        if not replaced:  # the stop was already planned for, or nothing left could be remade in time
            continue
        replanned += 1
        head = replaced[0]
        assert before[head["sequence"]].start_ms - now >= REVISE_LEAD_MS  # only what can be remade in time
        assert head["params"]["tempo_bpm"] < first[head["sequence"]]["params"]["tempo_bpm"] * 0.97
        kept = first[head["sequence"] - 1]  # it continues the segment that stays
        assert head["previous_segment_id"] == segment_id(kept["request_id"])
        assert head["request_id"] == request_id("l1", "s-1", head["sequence"], state.revision, kept["request_id"])
        assert [r["sequence"] for r in requests] == list(range(head["sequence"], head["sequence"] + len(requests)))
    assert replanned >= 1


def test_a_steady_runner_is_never_replanned() -> None:
    state, first, now = running()
    settled = state.revision  # (the start of the run may have replanned the first segments)
    for n in range(40, 80):
        state, requests = due_requests(observe(state, sample(T0 + n * 1000, cadence=170 + n % 2), now), now)
        assert all(r["sequence"] not in first for r in requests)
        first |= {r["sequence"]: r for r in requests}
        now += 1000
    assert state.revision == settled


def test_a_state_with_a_plan_survives_the_changelog_s_json() -> None:
    import json

    state, _, _ = running()
    assert state.ahead
    assert ListenerState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_a_body_flipping_between_states_is_replanned_at_most_every_few_seconds() -> None:
    """Each confirmed flip wants another plan; revisions are rate-limited, so a client (or a body)
    flipping every two samples cannot make inference render the buffer again each time."""
    from soundtrack.schedule import REVISE_EVERY_MS

    state, now, revised = running()[0], T0 + 40_000, []
    for n in range(40, 100):
        cadence = 170 if (n // 2) % 2 else 110  # two agreeing readings, then the other state
        before = state.revision
        state, _ = due_requests(observe(state, sample(T0 + n * 1000, cadence=cadence), now), now)
        if state.revision != before:
            revised.append(now)
        now += 1000
    assert revised and all(b - a >= REVISE_EVERY_MS for a, b in itertools.pairwise(revised))


def test_a_state_written_before_revisions_continues_its_last_request() -> None:
    state, _, _ = running()
    new_fields = ("revision", "revised_at_ms", "last_request_id", "ahead")
    loaded = ListenerState.from_dict({k: v for k, v in state.to_dict().items() if k not in new_fields})
    assert loaded.last_request_id == request_id("l1", "s-1", state.next_sequence - 1)


@pytest.mark.parametrize("cadence", [0, 105, 130, 170, 200])
def test_no_segment_is_shorter_than_the_watermark_needs_whatever_the_ramp(cadence: int) -> None:
    """The watermark needs ~1.9 s of audio; a fast ramp out of the 1-bar range must not make a 1-bar
    segment at a fast tempo (1 bar at 131 BPM is 1.83 s)."""
    for start in (0, 105, 170):
        state, now = ListenerState("l1"), T0
        for n in range(60):
            body = start if n < 20 else cadence
            state, requests = due_requests(observe(state, sample(T0 + n * 1000, cadence=body or None), now), now)
            for r in requests:
                p = r["params"]
                assert segment_ms(p["tempo_bpm"], p["bars"], p["tempo_from_bpm"]) >= 2_000, p
            now += 1000


def test_each_segment_glides_from_the_tempo_the_one_it_continues_ended_at() -> None:
    """Walking, running, walking: every request continuing another starts its glide at that one's tempo
    (a steady one glides from nowhere), so the tempo moves every beat; a session's first segment
    and every segment of a steady stretch hold one tempo."""
    state, now = ListenerState("l1"), T0
    requests: dict[str, dict[str, Any]] = {}
    for n in range(60):
        state = observe(state, sample(T0 + n * 1000, cadence=170 if 20 <= n < 40 else 110), now)
        state, due = due_requests(state, now, startup_ms=4_000)  # playing from 4 s: the changes fall mid-session
        requests |= {segment_id(r["request_id"]): r for r in due}
        now += 1000
    glides = 0
    for r in requests.values():
        before = requests.get(r["previous_segment_id"]) if r["previous_segment_id"] else None
        expected = None if before is None or before["params"]["tempo_bpm"] == r["params"]["tempo_bpm"] \
            else before["params"]["tempo_bpm"]
        assert r["params"]["tempo_from_bpm"] == expected, r
        glides += expected is not None
    assert glides >= 3
    first = min(requests.values(), key=lambda r: r["sequence"])
    assert first["params"]["tempo_from_bpm"] is None
