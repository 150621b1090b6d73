"""The copy guard: no generated melody repeats more than two bars (or ten notes) of a work it learned from.

A model trained on a few hundred works can reproduce stretches of them, and a stretch long enough to
be recognised is a rights holder's melody handed back, not a new one. A melody is compared as its
(interval, duration) pairs: each note after the first as its step from the previous note (in
semitones) and its own length (in sixteenths), so a copy is found in any key and after any rest.
A run of pairs *copies* a training work when the same consecutive pairs occur in that work and
last more than ``LIMIT_STEPS`` (two 4/4 bars) or number more than ``LIMIT_PAIRS`` (a run of short
notes: held-out chorales share up to 12 with the training set, `make bench-music`). The engine
resamples a segment whose melody, read on from the notes before it, holds such a run (``Engine``);
`make bench-music` measures the longest shared run independently (bench/melody_stats.py).

The guard holds, for every start in every training melody, the shortest run from there that passes
either limit: a copied run past a limit begins with exactly such a run (the same pairs have the same
durations), so looking those up from every start of a melody finds every copy.
Pure; ``from_melodies`` takes the pairs train.py writes into the model's ``copy_guard.json``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

from inference.music import Note

LIMIT_STEPS = 32  # sixteenths: two bars of 4/4
LIMIT_PAIRS = 10
Pair = tuple[int, int]  # (interval in semitones, duration in sixteenths)


def pairs(notes: Iterable[Note]) -> list[Pair]:
    """The (interval, duration) pairs of notes in time order (rests between them do not count)."""
    ordered = sorted(notes, key=lambda n: n.start)
    return [(b.rel - a.rel, b.length) for a, b in itertools.pairwise(ordered)]


def _shortest_runs_over(sequence: Sequence[Pair], limit: int, most: int) -> Iterable[tuple[int, tuple[Pair, ...]]]:
    """From each start, the shortest run lasting more than ``limit`` sixteenths or holding more than
    ``most`` pairs (none when the rest passes neither), with the index of its last pair."""
    for i in range(len(sequence)):
        total = 0
        for j in range(i, len(sequence)):
            total += sequence[j][1]
            if total > limit or j - i + 1 > most:
                yield j, tuple(sequence[i:j + 1])
                break


class CopyGuard:
    def __init__(self, runs: set[tuple[Pair, ...]], limit: int = LIMIT_STEPS, most: int = LIMIT_PAIRS) -> None:
        self._runs, self.limit, self.most = runs, limit, most

    @classmethod
    def from_melodies(cls, melodies: Mapping[str, Sequence[Sequence[int]]], limit: int = LIMIT_STEPS,
                      most: int = LIMIT_PAIRS) -> CopyGuard:
        runs: set[tuple[Pair, ...]] = set()
        for sequence in melodies.values():
            runs.update(run for _, run in _shortest_runs_over([(int(a), int(b)) for a, b in sequence], limit, most))
        return cls(runs, limit, most)

    def copies(self, notes: Sequence[Note], new_from: int = 0) -> bool:
        """Whether the melody holds a run past a limit that a training work holds, among the runs that
        reach note ``new_from`` or later (the notes before it were checked before)."""
        return any(last + 1 >= new_from and run in self._runs
                   for last, run in _shortest_runs_over(pairs(notes), self.limit, self.most))
