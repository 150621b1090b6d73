"""What a listener hears, measured from the played audio: shared by bench-adapt's simulated
players and the listener-page browser test.

Every played segment's beats come from its audio (the glide or constant tempo whose whole-bar
beat grid best explains its onsets, ``inference.analysis.fit_glide``, among the glides the
renderer can make: at most the policy's 35% a bar), placed at the wall time it played. From a
change instant (event time of the first telemetry sample in the new state):
  audible_first      the first beat after which the played tempo stays at least 3% away from the
                     tempo playing at the change, toward the target
  audible_converged  the first beat after which the played tempo stays within 3% of the target
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from inference.analysis import fit_glide
from inference.render import SAMPLE_RATE
from kit.audio import decode_bytes
from kit.tempo import beat_edges, beat_tempi
from soundtrack.policy import MAX_BIG_STEP


@dataclass
class Played:
    start_ms: int  # wall-clock instant it started playing
    duration_ms: int
    audio: bytes
    params: dict[str, Any]  # the segment's metadata: only to report how often the measurement disagrees
    beats: list[tuple[float, float]] = field(default_factory=list)  # (played at, ms; tempo to the next beat)


def track_beats(played: Sequence[Played]) -> int:
    """Fill in every played segment's beats, measured from its audio. Returns the segments whose
    measured grid disagrees with their metadata by more than 3% at either end, or that no whole-bar
    grid fits (no beats heard from them): misreads."""
    misreads = 0
    for segment in played:
        audio, _ = decode_bytes(segment.audio)
        try:  # among the glides the renderer can make (soundtrack.policy: at most 35% a bar)
            start, end, bars = fit_glide(audio, max_bar_change=MAX_BIG_STEP)
        except ValueError:
            misreads += 1
            continue
        edges = beat_edges(end, bars, start, SAMPLE_RATE)
        segment.beats = [(segment.start_ms + at * 1000 / SAMPLE_RATE, tempo)
                         for at, tempo in zip(edges, beat_tempi(end, bars, start), strict=False)]
        p = segment.params
        asked_from = p.get("tempo_from_bpm") or p["tempo_bpm"]
        misreads += abs(start / asked_from - 1) > 0.03 or abs(end / p["tempo_bpm"] - 1) > 0.03
    return misreads


def audible(played: Sequence[Played], change_ms: int, until_ms: int,
            target: float) -> tuple[float | None, float | None]:
    """(audible_first, audible_converged) in seconds after ``change_ms``, beat by beat, for beats
    played before ``until_ms`` (the next change); None when never reached in that window."""
    beats = [b for p in played for b in p.beats if b[0] < until_ms]
    before = [t for at, t in beats if at <= change_ms][-4:]
    after = [(at, t) for at, t in beats if at > change_ms]
    if not before or not after:
        return None, None
    playing = statistics.median(before)
    direction = 1 if target > playing else -1

    def first_from(ok: Callable[[float], bool]) -> float | None:
        for i, (at, _) in enumerate(after):
            if all(ok(t) for _, t in after[i:]):
                return (at - change_ms) / 1000
        return None

    return (first_from(lambda t: direction * (t - playing) >= 0.03 * playing),
            first_from(lambda t: abs(t / target - 1) <= 0.03))
