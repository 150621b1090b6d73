"""The telemetry -> music policy: targets, hysteresis and event-time state."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from soundtrack.policy import (
    DEAD_BAND,
    HOLD_MS,
    LARGE_CHANGE,
    MAX_BIG_STEP,
    MAX_RAMP,
    MOOD_DWELL_MS,
    Body,
    Music,
    Playing,
    advance,
    big_step,
    body_update,
    target,
)

T0 = 1_000_000


def body(hr: int | None = None, cadence: int | None = None, activity: str = "RUNNING", mode: str = "MATCH",
         zone: str = "NONE", at: int = T0) -> Body:
    return body_update(Body(), at, hr, cadence, activity, mode, zone)


def test_match_follows_cadence_one_beat_per_step() -> None:
    assert target(body(150, 168), T0).tempo_bpm == 168
    assert target(body(150, 168), T0).reason == "match:cadence"


def test_cadence_above_180_is_folded_to_half_time_and_tempo_is_clamped() -> None:
    assert target(body(170, 190), T0).tempo_bpm == 95
    assert target(body(170, 250), T0).tempo_bpm == 125
    assert 60 <= target(body(170, 100), T0).tempo_bpm <= 200


def test_exercise_without_cadence_uses_heart_rate_reserve() -> None:
    easy, hard = target(body(100, None, "CYCLING"), T0), target(body(180, None, "CYCLING"), T0)
    assert easy.reason == hard.reason == "match:heart_rate_reserve"
    assert easy.tempo_bpm < hard.tempo_bpm <= 140
    assert easy.energy < hard.energy


def test_rest_is_calm_and_missing_telemetry_drifts_to_neutral() -> None:
    assert target(body(62, None, "RESTING"), T0) == Music(70.0, 0.2, "MAJOR", "match:rest")
    assert target(body(62, None, "RESTING"), T0 + 16_000).reason == "no_telemetry:neutral"
    assert target(body(62, None, "RESTING"), T0 + 14_000).reason == "match:rest"  # held


def test_guide_leads_toward_the_zone() -> None:
    wanted = target(body(150, 170, mode="GUIDE", zone="COOL_DOWN"), T0)
    assert wanted.tempo_bpm == 80 and wanted.reason == "guide:cool_down"


def test_late_and_out_of_order_samples_do_not_rewind_state() -> None:
    b = body(120, 160, at=T0)
    assert body_update(b, T0 - 1000, 60, 0, "RESTING", "MATCH", "NONE") == b
    assert body_update(b, T0, 60, 0, "RESTING", "MATCH", "NONE") == b


def test_sensor_glitches_are_rejected_and_real_changes_smoothed() -> None:
    b = body(120, 160, at=T0)
    glitch = body_update(b, T0 + 1000, 220, 160, "RUNNING", "MATCH", "NONE")
    assert glitch.heart_rate == 120 and glitch.rejected == 1
    real = body_update(b, T0 + 4000, 130, 160, "RUNNING", "MATCH", "NONE")
    assert 120 < (real.heart_rate or 0) < 130


def test_an_unconfirmed_step_change_waits_for_the_hold_then_ramps_and_eases_into_the_target() -> None:
    playing = Playing(Music(70.0, 0.2, "MAJOR", "match:rest"))
    wanted = Music(170.0, 0.9, "MAJOR", "match:cadence")  # not confident: e.g. the first reading of a new level
    now, tempos = T0, []
    for _ in range(60):
        playing = advance(playing, wanted, now)
        tempos.append(playing.music.tempo_bpm)
        now += 1000
    assert tempos[: HOLD_MS // 1000] == [70.0] * (HOLD_MS // 1000)  # held
    moves = [(a, b) for a, b in itertools.pairwise(tempos) if b != a]
    assert moves and all(1 < b / a <= 1 + big_step(a) + 1e-9 for a, b in moves)  # a change of state: heard
    assert all(b / a <= 1 + MAX_RAMP + 1e-9 for a, b in moves if 170 - a <= LARGE_CHANGE * a)  # eased in
    assert max(b / a for a, b in moves) > 1 + MAX_RAMP  # faster than the old 3%-per-bar limit
    assert tempos[-1] == 170.0


def test_a_confirmed_cadence_change_applies_without_the_hold() -> None:
    running = body_update(body(160, 165, at=T0), T0 + 2000, 160, 166, "RUNNING", "MATCH", "NONE")
    assert target(running, T0 + 2000).confident
    first = body_update(running, T0 + 4000, 158, 105, "WALKING", "MATCH", "NONE")
    assert first.cadence == running.cadence and first.rejected == 1  # one reading of a new level: a glitch so far
    assert not target(first, T0 + 4000).confident
    second = body_update(first, T0 + 6000, 157, 104, "WALKING", "MATCH", "NONE")
    assert second.cadence == 104.5 and second.cadence_confirmed  # two agreeing readings: the new level, at once
    wanted = target(second, T0 + 6000)
    assert wanted.confident and wanted.tempo_bpm == 104.5
    playing = advance(Playing(Music(165.5, 0.8, "MAJOR", "match:cadence")), wanted, T0 + 6000)
    assert abs(playing.music.tempo_bpm - 165.5 * (1 - big_step(165.5))) < 1e-9  # the very next bar moves


def test_a_device_at_rest_without_cadence_is_a_stop() -> None:
    walking = body_update(body(120, 105, "WALKING", at=T0), T0 + 2000, 120, 106, "WALKING", "MATCH", "NONE")
    still = body_update(walking, T0 + 4000, 118, None, "RESTING", "MATCH", "NONE")
    still = body_update(still, T0 + 6000, 116, None, "RESTING", "MATCH", "NONE")
    assert still.cadence == 0 and still.cadence_confirmed
    assert target(still, T0 + 6000).confident and target(still, T0 + 6000).reason != "match:cadence"


def test_a_stop_calms_the_music_while_the_heart_rate_is_still_high() -> None:
    """A runner who slows to a walk and then stands still: the walk follows the cadence, the stop is
    rest (70 BPM), never a heart-rate tempo above the walk's (heart rate 130 would give 119 BPM)."""
    walking = body_update(body(130, 105, "WALKING", at=T0), T0 + 2000, 130, 104, "WALKING", "MATCH", "NONE")
    assert target(walking, T0 + 2000).tempo_bpm == pytest.approx(104.5, abs=0.5)
    still = body_update(walking, T0 + 4000, 130, None, "RESTING", "MATCH", "NONE")
    still = body_update(still, T0 + 6000, 128, None, "RESTING", "MATCH", "NONE")
    assert target(still, T0 + 6000) == Music(70.0, 0.2, "MAJOR", "match:rest", True)
    unknown = body_update(still, T0 + 8000, 128, None, "UNKNOWN", "MATCH", "NONE")  # no word of a stop
    assert target(unknown, T0 + 8000).reason == "match:heart_rate_reserve"


def test_guide_zones_and_the_neutral_drift_stay_gentle() -> None:
    playing = Playing(Music(170.0, 0.8, "MAJOR", "match:cadence"))
    now, tempos = T0, [170.0]
    for _ in range(20):
        playing = advance(playing, Music(80.0, 0.25, "MAJOR", "guide:cool_down", True), now)
        tempos.append(playing.music.tempo_bpm)
        now += 1000
    assert all(abs(b / a - 1) <= MAX_RAMP + 1e-9 for a, b in itertools.pairwise(tempos))
    assert tempos[-1] < 170.0


def test_changes_inside_the_dead_band_are_ignored() -> None:
    playing = Playing(Music(150.0, 0.6, "MAJOR", "x"))
    for n in range(20):
        playing = advance(playing, Music(150.0 * (1 + DEAD_BAND * 0.9), 0.6, "MAJOR", "y"), T0 + n * 1000)
    assert playing.music.tempo_bpm == 150.0


def test_mood_changes_need_agreement_and_dwell() -> None:
    playing = Playing(Music(150.0, 0.6, "MAJOR", "x"), mood_since_ms=T0)
    minor = Music(150.0, 0.9, "MINOR", "y")
    moments = []
    for n in range(0, 60_000, 1000):
        playing = advance(playing, minor, T0 + n)
        moments.append((n, playing.music.mode))
    first_minor = next(n for n, mode in moments if mode == "MINOR")
    assert first_minor >= MOOD_DWELL_MS


@given(start=st.floats(60, 200), goal=st.floats(60, 200), bars=st.integers(1, 80))
def test_tempo_stays_in_range_and_never_jumps_more_than_the_big_ramp(start: float, goal: float, bars: int) -> None:
    playing = Playing(Music(start, 0.5, "MAJOR", "x"))
    previous = start
    for n in range(bars):
        playing = advance(playing, Music(goal, 0.5, "MAJOR", "y"), T0 + n * 2000)
        tempo = playing.music.tempo_bpm
        assert 60 <= tempo <= 200
        assert abs(tempo - previous) <= big_step(previous) * previous + 0.01
        previous = tempo


def test_heart_rate_wishes_keep_the_hold_once_a_confirmed_stop_is_old() -> None:
    """Confidence comes from cadence: right after a confirmed stop the new wish applies at once, but a
    heart-rate wish later on (the cadence steady at 0) must hold like any other."""
    still = body_update(body(150, 0, "RESTING", at=T0), T0 + 2000, 150, None, "RESTING", "MATCH", "NONE")
    assert still.cadence_confirmed
    later = body_update(still, T0 + 2000 + HOLD_MS + 1000, 152, None, "RESTING", "MATCH", "NONE")
    assert later.cadence_confirmed and not target(later, T0 + 2000 + HOLD_MS + 1000).confident


def test_one_big_step_is_capped_however_long_the_bar() -> None:
    assert big_step(60.0) == MAX_BIG_STEP == 0.35 and 0.21 < big_step(170.0) < 0.23
