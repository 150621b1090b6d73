"""Exact, unbiased splits and scalings of integer amounts.

An AI segment pays a few dozen micro-units, split across up to a dozen works and their
rights holders, so many exact shares are fractions of a unit. Any deterministic rounding
rule (floor, largest remainder) rounds the same payee the same way play after play: a
holder with a 0.3-unit share gets nothing every time. Here the rounding is *systematic
sampling*: a uniform offset ``u`` in [0, total) drawn from a hash of (seed), and payee i
gets ``floor((C_i + u) / total) - floor((C_{i-1} + u) / total)`` where C_i is the running
sum of ``amount * weight``. Then, for any amount >= 0 and weights >= 0:

- the parts sum exactly to the amount;
- each part is the floor or the ceiling of its exact share;
- over the offsets (that is, over play ids) each part's mean is *exactly* its share, so no
  payee loses or gains on average, however small its share;
- the result depends only on (amount, weights, seed), not on insertion order.

All arithmetic is on integers: no floats anywhere. ``scale`` rounds amount * numerator /
denominator (a per-minute rate times the milliseconds heard) the same unbiased way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


class SplitError(ValueError):
    """The amount or the weights cannot be split (negative, empty or zero total)."""


def offset(seed: str, modulus: int) -> int:
    """A uniform integer in [0, modulus) from a hash of the seed (bias below 2**-128 * modulus)."""
    return int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=24).digest(), "big") % modulus


def scale(amount: int, numerator: int, denominator: int, seed: str) -> int:
    """amount * numerator / denominator, rounded down or up with the probability of its fraction."""
    if amount < 0 or numerator < 0 or denominator <= 0:
        raise SplitError(f"cannot scale {amount} by {numerator}/{denominator}")
    return (amount * numerator + offset(seed, denominator)) // denominator


def split(amount: int, weights: Mapping[K, int], seed: str) -> dict[K, int]:
    """``amount`` in proportion to ``weights``, exact and unbiased (see the module docstring)."""
    if amount < 0:
        raise SplitError(f"cannot split a negative amount ({amount})")
    if not weights:
        raise SplitError("cannot split among no one")
    if any(w < 0 for w in weights.values()):
        raise SplitError("weights must not be negative")
    total = sum(weights.values())
    if total <= 0:
        raise SplitError("weights sum to zero")
    u = offset(seed, total)
    parts: dict[K, int] = {}
    running, before = 0, u // total
    for payee in sorted(weights, key=str):  # a fixed order: insertion order must not matter
        running += amount * weights[payee]
        after = (running + u) // total
        parts[payee] = after - before
        before = after
    return parts
