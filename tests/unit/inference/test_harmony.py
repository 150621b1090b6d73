"""Harmony learned from four voices, and the drum fills at section ends."""

from __future__ import annotations

import numpy as np

from inference.engine import Engine
from inference.harmony import START, Harmony, chords_of, learn
from inference.music import Note, triad
from inference.render import CRASH, DRUMS, HIGH_TOM, LOW_TOM, MID_TOM, arrange

# C major, two bars, four half bars: I (C E G C), IV (F A C F), V (G B D G), I
SOPRANO = [(0, 8, 12), (8, 8, 12), (16, 8, 11), (24, 8, 12)]
ALTO = [(0, 8, 7), (8, 8, 9), (16, 8, 7), (24, 8, 7)]
TENOR = [(0, 8, 4), (8, 8, 5), (16, 8, 2), (24, 8, 4)]
BASS = [(0, 8, -12), (8, 8, -7), (16, 8, -5), (24, 8, -12)]


def test_the_chords_are_read_from_the_four_voices_over_the_bass() -> None:
    assert chords_of([SOPRANO, ALTO, TENOR, BASS], "MAJOR") == [(0, 0), (0, 3), (11, 4), (0, 0)]
    lonely = [(0, 32, 12)], [(0, 32, 1)], [(0, 32, 6)], [(0, 32, -11)]  # no triad over a C# bass
    assert chords_of(list(lonely), "MAJOR")[0][1] is None


def test_counts_follow_the_progressions_and_a_gap_restarts_them() -> None:
    counts = learn([("MAJOR", [(0, 0), (0, 3), (11, 4), (None, None), (0, 0)])])
    assert counts["MAJOR"] == {f"{START},0,0": 2, "0,0,3": 1, "3,11,4": 1}


def test_the_learned_progression_wins_where_the_melody_allows_it_and_cadences_hold() -> None:
    # taught that under a C after I comes vi (A C E) rather than IV (F A C) or I again
    harmony = Harmony(learn([("MAJOR", [(0, 0), (0, 5)])] * 20))
    melody = [Note(0, 8, 0), Note(8, 8, 0), Note(16, 8, 7), Note(24, 8, 0)]
    chosen = harmony.choose(melody, "MAJOR", 2, previous_degree=0, cadences={3: (0,)})
    assert chosen[0] == 5 and chosen[3] == 0  # the cadence holds its tonic
    for note, degree in zip(melody, chosen, strict=True):
        assert note.rel % 12 in {x % 12 for x in triad("MAJOR", degree)}  # every chord holds the melody


def test_the_committed_model_harmonises_with_its_learned_counts() -> None:
    engine = Engine()
    assert engine.harmony is not None


def drums(energy: float, fills: frozenset[int], downbeats: frozenset[int]) -> list[tuple[float, int]]:
    events = arrange([Note(0, 32, 0)], [0, 3, 4, 0], "MAJOR", 0, energy, 2, np.random.default_rng(1),
                     fills=fills, downbeats=downbeats)
    return [(e.step, e.key) for e in events if e.channel == DRUMS and e.velocity > 0]


def test_a_section_end_has_a_fill_on_its_last_beat_and_the_next_section_a_crash() -> None:
    plain, filled = drums(0.6, frozenset(), frozenset()), drums(0.6, frozenset({1}), frozenset({0}))
    toms = [(step, key) for step, key in filled if key in (HIGH_TOM, MID_TOM, LOW_TOM)]
    assert [step for step, _ in toms] == [28, 29, 30] and (0, CRASH) in filled
    assert not any(key in (HIGH_TOM, MID_TOM, LOW_TOM, CRASH) for _, key in plain)
    assert [e for e in filled if e[0] < 28 and e[1] != CRASH] == [e for e in plain if e[0] < 28]
    assert drums(0.1, frozenset({1}), frozenset({0})) == []  # asleep: no percussion, no fill
