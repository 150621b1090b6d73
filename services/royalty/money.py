"""Exact splits of integer amounts.

``split_by_largest_remainder`` divides an integer amount among payees in proportion
to integer weights (Hamilton's method): everyone gets the floor of their exact
share, and the units left over go one each to the largest fractional parts. Ties
between equal fractional parts are broken by a hash of (seed, payee), so the order
differs from one play to the next and no payee is favoured over time. All
arithmetic is on integers: no floats anywhere.

Guarantees, for any amount >= 0 and positive weights:
- the parts sum exactly to the amount;
- each part is within one unit of the exact share (floor or floor + 1);
- the result depends only on (amount, weights, seed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


class SplitError(ValueError):
    """The amount or the weights cannot be split (negative, empty or zero total)."""


def tie_break(seed: str, payee: Hashable) -> bytes:
    return hashlib.blake2b(f"{seed}\x00{payee}".encode(), digest_size=8).digest()


def split_by_largest_remainder(amount: int, weights: Mapping[K, int], seed: str) -> dict[K, int]:
    if amount < 0:
        raise SplitError(f"cannot split a negative amount ({amount})")
    if not weights:
        raise SplitError("cannot split among no one")
    if any(w < 0 for w in weights.values()):
        raise SplitError("weights must not be negative")
    total = sum(weights.values())
    if total <= 0:
        raise SplitError("weights sum to zero")
    parts = {}
    remainders = []
    for payee, weight in weights.items():
        share, remainder = divmod(amount * weight, total)
        parts[payee] = share
        remainders.append((remainder, payee))
    left = amount - sum(parts.values())
    if left:
        remainders.sort(key=lambda item: item[0], reverse=True)
        cutoff = remainders[left - 1][0]
        winners = [payee for remainder, payee in remainders if remainder > cutoff]
        tied = [payee for remainder, payee in remainders if remainder == cutoff]
        if len(winners) + len(tied) > left:  # the last units go to some of equal remainders: draw by hash
            tied.sort(key=lambda payee: tie_break(seed, payee))
        for payee in winners + tied[: left - len(winners)]:
            parts[payee] += 1
    return parts
