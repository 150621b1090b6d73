"""Splits and scalings: exact, within one unit, and unbiased however small a share is."""

from __future__ import annotations

from collections import defaultdict
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from royalty import money
from royalty.money import SplitError, scale, split

weights = st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=100)


@given(amount=st.integers(min_value=0, max_value=10**15), ws=weights, seed=st.text(max_size=20))
@settings(max_examples=500)
def test_parts_sum_exactly_and_each_is_the_floor_or_ceiling_of_its_exact_share(amount: int, ws: list[int],
                                                                              seed: str) -> None:
    weight_map = {f"payee-{i}": w for i, w in enumerate(ws)}
    parts = split(amount, weight_map, seed)
    assert sum(parts.values()) == amount
    total = sum(ws)
    for payee, weight in weight_map.items():
        exact = Fraction(amount * weight, total)
        assert exact - 1 < parts[payee] < exact + 1
        assert parts[payee] >= 0


@given(amount=st.integers(min_value=0, max_value=10**15), ws=weights, seed=st.text(max_size=20))
def test_the_split_is_deterministic_and_independent_of_insertion_order(amount: int, ws: list[int], seed: str) -> None:
    forward = {f"p{i}": w for i, w in enumerate(ws)}
    backward = dict(reversed(list(forward.items())))
    assert split(amount, forward, seed) == split(amount, backward, seed)


@given(amount=st.integers(min_value=0, max_value=200), ws=st.lists(st.integers(1, 60), min_size=1, max_size=6))
@settings(max_examples=300)
def test_over_every_offset_each_payee_s_mean_is_exactly_its_share(amount: int, ws: list[int]) -> None:
    """The bias is gone, exactly: the offset is uniform on [0, total), and averaged over all of its
    values every payee's part equals its exact share as a fraction (not approximately)."""
    weight_map = {f"p{i}": w for i, w in enumerate(ws)}
    total = sum(ws)
    sums: dict[str, int] = defaultdict(int)
    original = money.offset
    try:
        for u in range(total):
            money.offset = lambda seed, modulus, u=u: u  # type: ignore[misc]
            for payee, part in split(amount, weight_map, "any").items():
                sums[payee] += part
    finally:
        money.offset = original
    for payee, weight in weight_map.items():
        assert Fraction(sums[payee], total) == Fraction(amount * weight, total)


@given(amount=st.integers(0, 10**6), numerator=st.integers(0, 10**6), denominator=st.integers(1, 500))
def test_scaling_over_every_offset_is_exact_on_average(amount: int, numerator: int, denominator: int) -> None:
    original = money.offset
    try:
        results = []
        for u in range(denominator):
            money.offset = lambda seed, modulus, u=u: u  # type: ignore[misc]
            results.append(scale(amount, numerator, denominator, "any"))
    finally:
        money.offset = original
    exact = Fraction(amount * numerator, denominator)
    assert all(exact - 1 < r < exact + 1 for r in results)
    assert Fraction(sum(results), denominator) == exact


def largest_remainder(amount: int, weights: dict[str, int]) -> dict[str, int]:
    """The rounding this module replaced (Hamilton's method), for the comparison below."""
    total = sum(weights.values())
    parts = {p: amount * w // total for p, w in weights.items()}
    by_remainder = sorted(weights, key=lambda p: amount * weights[p] % total, reverse=True)
    for p in by_remainder[: amount - sum(parts.values())]:
        parts[p] += 1
    return parts


def test_a_small_share_of_many_small_plays_is_paid_in_full_over_a_month() -> None:
    """A 3-second EU-premium segment pays 57 µ€ of which a 0.4% influence is owed 0.228 µ€: largest
    remainder rounds it to 0 on every play; the unbiased split pays it its share over many plays
    (real play ids as seeds, no offset enumeration)."""
    weights = {"big": 600_000, "mid": 250_000, "small-1": 146_000, "tiny": 4_000}
    plays = 20_000
    old = sum(largest_remainder(57, weights)["tiny"] for _ in range(plays))
    new = sum(split(57, weights, seed=f"play-{n}/COMPOSITION")["tiny"] for n in range(plays))
    owed = 57 * 4_000 / 1_000_000 * plays  # 4,560 µ€
    sigma = (plays * 0.228 * (1 - 0.228)) ** 0.5  # each play pays 0 or 1: Bernoulli(0.228)
    assert old == 0
    assert abs(new - owed) < 5 * sigma


@pytest.mark.parametrize(("amount", "ws", "reason"), [
    (-1, {"a": 1}, "negative amount"),
    (10, {}, "among no one"),
    (10, {"a": 0}, "sum to zero"),
    (10, {"a": -1, "b": 2}, "must not be negative"),
])
def test_impossible_splits_are_refused(amount: int, ws: dict[str, int], reason: str) -> None:
    with pytest.raises(SplitError, match=reason):
        split(amount, ws, "s")
    with pytest.raises(SplitError):
        scale(-1, 1, 1, "s")
