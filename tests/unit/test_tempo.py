"""The beat grid of a segment (kit.tempo): constant tempo as before, glides beat by beat."""

from __future__ import annotations

import itertools

import pytest

from kit.tempo import beat_edges, beat_tempi, duration_ms, step_sample

RATE = 44_100


@pytest.mark.parametrize("bpm", [60, 123, 200])
def test_a_constant_tempo_is_the_exact_grid_it_always_was(bpm: int) -> None:
    edges = beat_edges(bpm, 4, None, RATE)
    assert round(edges[-1]) == round(4 * 16 * RATE * 15 / bpm)
    assert all(step_sample(edges, s) == round(s * RATE * 15 / bpm) for s in range(0, 64))
    assert beat_edges(bpm, 4, float(bpm), RATE) == edges  # gliding from the same tempo is no glide
    assert duration_ms(bpm, 4) == round(4 * 4 * 60_000 / bpm)


@pytest.mark.parametrize(("start", "end"), [(90.0, 170.0), (170.0, 105.0)])
def test_a_glide_moves_every_beat_by_the_same_step_and_ends_on_its_tempo(start: float, end: float) -> None:
    tempi = beat_tempi(end, 2, start)
    assert len(tempi) == 8 and tempi[-1] == end
    steps = [b - a for a, b in itertools.pairwise((start, *tempi))]
    assert steps == pytest.approx([(end - start) / 8] * 8)
    edges = beat_edges(end, 2, start, RATE)
    lengths = [b - a for a, b in itertools.pairwise(edges)]
    assert lengths == pytest.approx([RATE * 60 / t for t in tempi])
    assert [step_sample(edges, 4 * k) for k in range(9)] == [round(e) for e in edges]  # never drifting
    assert abs(duration_ms(end, 2, start) - round(edges[-1]) * 1000 / RATE) < 1


def test_a_step_inside_a_beat_is_placed_linearly_and_the_tail_at_the_last_tempo() -> None:
    edges = beat_edges(150.0, 1, 100.0, RATE)
    assert step_sample(edges, 2) == round((edges[0] + edges[1]) / 2)
    last = edges[-1] - edges[-2]
    assert step_sample(edges, 16 + 4) == round(edges[-1] + last)  # a note-off one beat past the end
