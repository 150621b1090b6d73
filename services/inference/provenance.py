"""Influence weights: which catalog works a generated melody resembles, and how much.

Method: every work the model was trained on (the manifest's works minus its held-out
works) is summarised by a profile of its melodic trigrams, (interval, interval,
duration) counts; a segment's influence on each work is the cosine similarity of the
two profiles, the segment's taken over its phrase so far (``engine.phrase_so_far``). The
top works with AI-generation consent get weights proportional to their similarity, in
parts per million summing exactly to 1,000,000 (largest remainder).

Short segments: a segment with fewer than three notes has no trigram. It is compared
at the highest order it has — (interval, duration) pairs, then durations — against the
same marginals of every work's trigram profile. If even that matches nothing (no note
at all, or no shared pair), the weight goes equally to every consenting trained work:
the model as a whole, never a fixed set of favourites.

Ties (equal scores, equal remainders) are broken by a hash of the segment's notes and
the work id, so no work is favoured by its id.

Limits (also in the model card): this measures surface similarity of the output to
each work, not the causal contribution of each work to the weights (`make
bench-attribution` checks it against retraining without groups of works: it does not
follow it yet); works whose melodies are alike share influence; a segment resembling nothing strongly still
distributes its weight over its nearest works.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import pairwise

from inference.music import Note

PPM = 1_000_000


def profile(notes: list[Note]) -> dict[str, int]:
    """Trigram counts: ``"interval,interval,duration"``."""
    grams: Counter[str] = Counter()
    for a, b, c in zip(notes, notes[1:], notes[2:], strict=False):
        grams[f"{b.rel - a.rel},{c.rel - b.rel},{c.length}"] += 1
    return dict(grams)


def lower_orders(notes: list[Note]) -> list[tuple[int, dict[str, int]]]:
    """The segment's own profiles below trigrams: (order, counts) for pairs, then durations."""
    pairs: Counter[str] = Counter(f"{b.rel - a.rel},{b.length}" for a, b in pairwise(notes))
    durations: Counter[str] = Counter(str(n.length) for n in notes)
    return [(2, dict(pairs)), (1, dict(durations))]


def marginal(trigrams: Mapping[str, int], order: int) -> dict[str, int]:
    """A work's (interval, duration) pairs (order 2) or durations (order 1), from its trigram counts."""
    out: Counter[str] = Counter()
    for gram, count in trigrams.items():
        _, second, length = gram.split(",")
        out[f"{second},{length}" if order == 2 else length] += count
    return dict(out)


def cosine(a: Mapping[str, int], b: Mapping[str, int]) -> float:
    dot = sum(v * b.get(k, 0) for k, v in a.items())
    if not dot:
        return 0.0
    return dot / math.sqrt(sum(v * v for v in a.values()) * sum(v * v for v in b.values()))


def _tie(salt: str, work: str) -> bytes:
    return hashlib.sha256(f"{salt}\x00{work}".encode()).digest()


def to_ppm(scores: Mapping[str, float], salt: str = "") -> dict[str, int]:
    """Weights in ppm proportional to scores, summing exactly to 1,000,000 (remainder ties by hash)."""
    total = sum(scores.values())
    exact = {k: v * PPM / total for k, v in scores.items()}
    parts = {k: int(v) for k, v in exact.items()}
    left = PPM - sum(parts.values())
    for k in sorted(exact, key=lambda k: (parts[k] - exact[k], _tie(salt, k)))[:left]:
        parts[k] += 1
    return {k: v for k, v in parts.items() if v > 0}


# (id of a profiles mapping, order) -> (that mapping, kept alive so its id is not reused; its marginals)
_MARGINALS: dict[tuple[int, int], tuple[object, dict[str, dict[str, int]]]] = {}


def _marginals(profiles: Mapping[str, Mapping[str, int]], order: int) -> dict[str, dict[str, int]]:
    """Every work's lower-order profile, computed once per profiles mapping."""
    key = (id(profiles), order)
    if key not in _MARGINALS:
        _MARGINALS[key] = (profiles, {work: marginal(grams, order) for work, grams in profiles.items()})
    return _MARGINALS[key][1]


def influences(notes: list[Note], profiles: Mapping[str, Mapping[str, int]], allowed: Iterable[str],
               top: int = 5) -> list[tuple[str, int]]:
    """Top ``top`` allowed works by similarity, weights in ppm summing to 1,000,000.

    ``profiles`` must hold only works the model was trained on; ``allowed`` narrows them to
    the works whose holders grant AI generation now. Raises ValueError when none is allowed."""
    candidates = sorted(w for w in set(allowed) if w in profiles)
    if not candidates:
        raise ValueError("no trained work with generation consent to attribute to")
    salt = ",".join(f"{n.rel}:{n.length}" for n in notes)
    chosen: dict[str, float] = {}
    for order, own in [(3, profile(notes)), *lower_orders(notes)]:
        if not own:
            continue
        theirs = profiles if order == 3 else _marginals(profiles, order)
        scores = sorted(((cosine(own, theirs[w]), w) for w in candidates), key=lambda s: (-s[0], _tie(salt, s[1])))
        chosen = {work: score for score, work in scores[:top] if score > 0}
        if chosen:
            break
    if not chosen:  # nothing at any order: the model as a whole
        chosen = {work: 1.0 for work in candidates}
    weights = to_ppm(chosen, salt)
    return sorted(weights.items(), key=lambda item: (-item[1], item[0]))
