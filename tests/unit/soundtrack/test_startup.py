"""A new session's start-up delay follows the measured time to its first segment."""

from __future__ import annotations

from kit.deadlines import PLAYER_MARGIN_MS
from soundtrack.schedule import ListenerState, due_requests, observe
from soundtrack.startup import DEFAULT_MS, MAX_MS, MIN_MS, MIN_SAMPLES, SLACK_MS, WINDOW, StartupDelay

T0 = 1_800_000_000_000


def test_the_default_stands_until_enough_first_segments_are_measured() -> None:
    delay = StartupDelay()
    for _ in range(MIN_SAMPLES - 1):
        assert delay.delay_ms() == DEFAULT_MS
        delay.observe(T0, T0 + 9_000)
    assert delay.delay_ms() == DEFAULT_MS
    delay.observe(T0, T0 + 9_000)
    assert delay.delay_ms() == PLAYER_MARGIN_MS + 9_000 + SLACK_MS


def test_an_idle_pipeline_starts_sooner_and_a_busy_one_later_within_bounds() -> None:
    delay = StartupDelay()
    for _ in range(WINDOW):
        delay.observe(T0, T0 + 600)  # ~0.6 s to a first segment: idle
    idle = delay.delay_ms()
    assert idle == max(MIN_MS, PLAYER_MARGIN_MS + 600 + SLACK_MS) < DEFAULT_MS
    for _ in range(WINDOW // 4):  # a burst: a quarter of the window is slow
        delay.observe(T0, T0 + 7_000)
    assert delay.delay_ms() == PLAYER_MARGIN_MS + 7_000 + SLACK_MS  # the p90 sees it
    for _ in range(WINDOW):
        delay.observe(T0, T0 + 60_000)
    assert delay.delay_ms() == MAX_MS
    for _ in range(WINDOW):  # the burst is over: forgotten after a window of fast ones
        delay.observe(T0, T0 + 600)
    assert delay.delay_ms() == idle


def test_a_clock_skew_cannot_make_a_negative_time() -> None:
    delay = StartupDelay()
    for _ in range(MIN_SAMPLES):
        delay.observe(T0, T0 - 5_000)
    assert delay.delay_ms() == MIN_MS


def test_the_scheduler_starts_playback_after_the_delay_it_is_given() -> None:
    sample = {"session_id": "s-1", "event_time": T0, "heart_rate_bpm": 150, "cadence_spm": 168,
              "activity": "RUNNING", "session_mode": "MATCH", "guide_target": "NONE"}
    for startup in (MIN_MS, DEFAULT_MS, MAX_MS):
        state, requests = due_requests(observe(ListenerState("l1"), sample, T0), T0, startup)
        assert requests[0]["deadline"] == T0 + startup - PLAYER_MARGIN_MS
        assert state.ahead[0].start_ms == T0 + startup
