"""Influence weights: which catalog works a generated melody resembles, and how much.

Method: every work (and every generated segment) is summarised by a profile of its
melodic trigrams, (interval, interval, duration) counts; a segment's influence on
each work is the cosine similarity of the two profiles. The top works with
AI-generation consent get weights proportional to their similarity, in parts per
million summing exactly to 1,000,000 (largest remainder).

Limits (also in the model card): this measures surface similarity of the output to
each work, not the causal contribution of each work to the weights; works whose
melodies are alike share influence; a segment resembling nothing strongly still
distributes its weight over its nearest works.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping

from inference.music import Note

PPM = 1_000_000


def profile(notes: list[Note]) -> dict[str, int]:
    grams: Counter[str] = Counter()
    for a, b, c in zip(notes, notes[1:], notes[2:], strict=False):
        grams[f"{b.rel - a.rel},{c.rel - b.rel},{c.length}"] += 1
    return dict(grams)


def cosine(a: Mapping[str, int], b: Mapping[str, int]) -> float:
    dot = sum(v * b.get(k, 0) for k, v in a.items())
    if not dot:
        return 0.0
    return dot / math.sqrt(sum(v * v for v in a.values()) * sum(v * v for v in b.values()))


def to_ppm(scores: Mapping[str, float]) -> dict[str, int]:
    """Weights in ppm proportional to scores, summing exactly to 1,000,000."""
    total = sum(scores.values())
    exact = {k: v * PPM / total for k, v in scores.items()}
    parts = {k: int(v) for k, v in exact.items()}
    left = PPM - sum(parts.values())
    for k in sorted(exact, key=lambda k: (parts[k] - exact[k], k))[:left]:
        parts[k] += 1
    return {k: v for k, v in parts.items() if v > 0}


def influences(notes: list[Note], profiles: Mapping[str, Mapping[str, int]], allowed: Iterable[str],
               top: int = 5) -> list[tuple[str, int]]:
    """Top ``top`` allowed works by similarity, weights in ppm summing to 1,000,000."""
    segment = profile(notes)
    allowed = set(allowed)
    scores = sorted(((cosine(segment, p), work) for work, p in profiles.items() if work in allowed), reverse=True)
    chosen = {work: score for score, work in scores[:top] if score > 0} or \
             {work: 1.0 for _, work in scores[:top]}
    weights = to_ppm(chosen)
    return sorted(weights.items(), key=lambda item: (-item[1], item[0]))
