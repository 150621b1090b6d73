"""Harmony learned from the four-part chorales: which chord follows which, under which melody note.

The chorales are harmonised in four parts, so the progressions are data rather than a rule. Per half
bar of a chorale (the engine's harmonic rhythm) ``chords_of`` reads the pitches sounding at its start
in all four voices and names the diatonic triad of ``music.TRIADS`` over the bass that holds the most
of them; ``learn`` counts, per mode, how often each chord follows each chord under each melody pitch
class. ``Harmony.choose`` then harmonises a segment by Viterbi over its half bars: every chord must
hold the melody note (as the rule did), cadences keep their chords (``inference.form``), and the path
maximises the product of the learned P(chord | previous chord, melody pitch class), smoothed toward
P(chord | previous chord) and a uniform floor so unseen contexts still move.

Pure: train.py passes the chorales' voices in and writes the counts beside the weights
(``harmony.json``); the engine loads them, and without them (older versions) keeps the rule.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence

from inference.music import TRIADS, Note, melody_pc, triad

HALF = 8  # sixteenths per half bar
START = -1  # the "previous chord" of a chorale's first half bar
Voice = Sequence[tuple[int, int, int]]  # (start, length, rel): sixteenths and semitones from the tonic


def _sounding(voice: Voice, starts: list[int], at: int) -> int | None:
    i = bisect_right(starts, at) - 1
    if i >= 0 and voice[i][0] + voice[i][1] > at:
        return voice[i][2]
    return None


def chords_of(voices: Sequence[Voice], mode: str) -> list[tuple[int | None, int | None]]:
    """Per half bar of a chorale (soprano first, bass last): (melody pitch class, chord degree or None
    where no triad of ``TRIADS[mode]`` holds the bass and one more voice)."""
    ordered = [sorted(v) for v in voices]
    starts = [[n[0] for n in v] for v in ordered]
    end = max((n[0] + n[1] for v in ordered for n in v), default=0)
    soprano = [Note(s, length, rel) for s, length, rel in ordered[0]]
    out: list[tuple[int | None, int | None]] = []
    for at in range(0, end, HALF):
        pitches = [p for v, s in zip(ordered, starts, strict=True) if (p := _sounding(v, s, at)) is not None]
        bass = _sounding(ordered[-1], starts[-1], at)
        pcs = {p % 12 for p in pitches}
        best, held = None, 1
        for degree in TRIADS[mode]:
            tones = {x % 12 for x in triad(mode, degree)}
            if bass is None or bass % 12 not in tones:
                continue
            if len(pcs & tones) > held:
                best, held = degree, len(pcs & tones)
        out.append((melody_pc(soprano, at), best))
    return out


def learn(chorales: Sequence[tuple[str, Sequence[tuple[int | None, int | None]]]]) -> dict[str, dict[str, int]]:
    """Counts per mode of 'previous,pc,degree' (previous START at a chorale's start; a half bar
    without a named chord breaks the chain)."""
    counts: dict[str, dict[str, int]] = {mode: {} for mode in TRIADS}
    for mode, halves in chorales:
        previous = START
        for pc, degree in halves:
            if degree is None or pc is None:
                previous = START
                continue
            key = f"{previous},{pc},{degree}"
            counts[mode][key] = counts[mode].get(key, 0) + 1
            previous = degree
    return counts


class Harmony:
    def __init__(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        self._joint: dict[tuple[str, int, int | None], dict[int, int]] = {}
        self._marginal: dict[tuple[str, int], dict[int, int]] = {}
        for mode, table in counts.items():
            for key, n in table.items():
                previous, pc, degree = (int(part) for part in key.split(","))
                joint = self._joint.setdefault((mode, previous, pc), {})
                joint[degree] = joint.get(degree, 0) + n
                marginal = self._marginal.setdefault((mode, previous), {})
                marginal[degree] = marginal.get(degree, 0) + n

    def log_p(self, mode: str, previous: int, pc: int | None, degree: int) -> float:
        """log P(degree | previous, pc): the counts under this melody note, smoothed toward those after
        the previous chord under any note (add-one), with the weight of two observations."""
        joint = self._joint.get((mode, previous, pc), {})
        marginal = self._marginal.get((mode, previous), {})
        p_marginal = (marginal.get(degree, 0) + 1) / (sum(marginal.values()) + len(TRIADS[mode]))
        return math.log((joint.get(degree, 0) + 2 * p_marginal) / (sum(joint.values()) + 2))

    def choose(self, notes: Sequence[Note], mode: str, bars: int, previous_degree: int = 0,
               cadences: Mapping[int, tuple[int, ...]] | None = None) -> list[int]:
        """A chord degree per half bar: the most probable progression under the learned counts that
        holds the melody note in every chord and the cadence's chord where the form puts one."""
        degrees = TRIADS[mode]
        paths: dict[int, tuple[float, list[int]]] = {previous_degree: (0.0, [])}
        for half in range(bars * 2):
            pc = melody_pc(notes, half * HALF)
            allowed = [d for d in degrees if pc is None or pc in {x % 12 for x in triad(mode, d)}] or list(degrees)
            if cadences and half in cadences:
                allowed = [d for d in allowed if d in cadences[half]] or allowed
            paths = {d: max(((score + self.log_p(mode, prev, pc, d), [*path, d])
                             for prev, (score, path) in paths.items()), key=lambda c: c[0]) for d in allowed}
        return max(paths.values(), key=lambda c: c[0])[1]
