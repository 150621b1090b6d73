"""A segment's beat grid: where each beat falls when the tempo glides from one tempo to another.

A segment of ``bars`` bars has ``4 * bars`` beats. Gliding from ``tempo_from`` (the tempo of the
previous segment's last beat) to ``tempo_to``, beat k plays at
``tempo_from + (tempo_to - tempo_from) * (k + 1) / beats``: every beat moves the same step, the
first one already, the last one is at ``tempo_to``, so a ramp is heard beat by beat and continues
where the previous segment stopped. Without ``tempo_from`` (or with the same tempo) every beat is at
``tempo_to``. Positions are rounded to samples from the exact running sum, so the grid never
drifts (and a constant tempo places every sixteenth where ``step * rate * 15 / bpm`` does). The
soundtrack scheduler (how long a segment plays) and the renderer (where each note starts) both
use it, so they agree to the sample.
"""

from __future__ import annotations

from functools import lru_cache

BEATS_PER_BAR = 4
STEPS_PER_BEAT = 4  # sixteenths


def beat_tempi(tempo_to: float, bars: int, tempo_from: float | None = None) -> tuple[float, ...]:
    """The tempo (BPM) of every beat of the segment, in order."""
    beats = bars * BEATS_PER_BAR
    if tempo_from is None or tempo_from == tempo_to:
        return (float(tempo_to),) * beats
    return tuple(tempo_from + (tempo_to - tempo_from) * (k + 1) / beats for k in range(beats))


@lru_cache(maxsize=4096)
def beat_edges(tempo_to: float, bars: int, tempo_from: float | None, sample_rate: int) -> tuple[float, ...]:
    """Where every beat boundary falls, in (fractional) samples: ``4 * bars + 1`` of them, from 0
    to the segment's end (its length in samples is ``round(edges[-1])``)."""
    edges, exact = [0.0], 0.0
    for tempo in beat_tempi(tempo_to, bars, tempo_from):
        exact += sample_rate * 60.0 / tempo
        edges.append(exact)
    return tuple(edges)


def step_sample(edges: tuple[float, ...], step: float) -> int:
    """The sample a position in sixteenths falls on: linear inside its beat; past the last beat
    (notes ringing into the tail) at the last beat's tempo."""
    beat = min(int(step // STEPS_PER_BEAT), len(edges) - 2)
    start, end = edges[beat], edges[beat + 1]
    return round(start + (step / STEPS_PER_BEAT - beat) * (end - start))


def duration_ms(tempo_to: float, bars: int, tempo_from: float | None = None) -> int:
    """How long the segment plays, in ms."""
    return round(sum(60_000.0 / tempo for tempo in beat_tempi(tempo_to, bars, tempo_from)))
