"""The one consent rule (kit.consent): opt-in for every purpose, per-work over catalog-wide,
and a later change to a scheduled record wins over it even at the same effective time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kit.consent import PURPOSES, ConsentHistory

T = 1_800_000_000_000
GRANT = {"ai_training": True, "ai_generation": True, "likeness": False}
NOTHING = {"ai_training": False, "ai_generation": False, "likeness": False}


def test_no_record_means_no_consent_for_every_purpose() -> None:
    for purpose in PURPOSES:
        assert not ConsentHistory().allowed(purpose, "rh-1", "wk-1", T)
    with pytest.raises(ValueError, match="unknown consent purpose"):
        ConsentHistory().allowed("ai_everything", "rh-1", "wk-1", T)


def test_a_scheduled_grant_can_be_cancelled_at_the_same_effective_time() -> None:
    consent = ConsentHistory()
    consent.add("rh-1", None, T, GRANT, updated_at=T - 60_000)    # grant scheduled for T
    consent.add("rh-1", None, T, NOTHING, updated_at=T - 30_000)  # then cancelled, same effective_from
    assert not consent.allowed("ai_generation", "rh-1", "wk-1", T + 1)
    consent.add("rh-1", None, T, GRANT, updated_at=T - 10_000)    # and granted again
    assert consent.allowed("ai_generation", "rh-1", "wk-1", T + 1)


def test_equal_times_fall_back_to_the_topic_position() -> None:
    consent = ConsentHistory()
    consent.add("rh-1", None, T, NOTHING, updated_at=T, position=8)
    consent.add("rh-1", None, T, GRANT, updated_at=T, position=7)  # read in any order: offset 8 is the later one
    assert not consent.allowed("ai_training", "rh-1", "wk-1", T)


def test_per_work_overrides_catalog_and_tombstones_allow_nothing() -> None:
    consent = ConsentHistory()
    consent.add_record({"rights_holder_id": "rh-1", "work_id": None, "effective_from": 0, "updated_at": 0, **GRANT})
    consent.add("rh-1", "wk-2", 0, {"ai_generation": False, "ai_training": True})
    assert consent.allowed("ai_generation", "rh-1", "wk-1", T)
    assert not consent.allowed("ai_generation", "rh-1", "wk-2", T) and consent.allowed("ai_training", "rh-1", "wk-2", T)
    assert not consent.allowed("likeness", "rh-1", "wk-1", T)
    consent.withdraw("rh-1", None, T - 1)
    assert not consent.allowed("ai_training", "rh-1", "wk-1", T)
    assert consent.work_allowed("ai_training", {"rh-1"}, "wk-2", T)  # the per-work record still stands
    assert not consent.work_allowed("ai_training", set(), "wk-3", T)  # no holder: nobody consented


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.booleans()), min_size=1, max_size=12))
def test_the_record_in_effect_is_the_latest_by_effective_then_updated_then_position(
        records: list[tuple[int, int, bool]]) -> None:
    consent = ConsentHistory()
    for position, (effective, updated, granted) in enumerate(records):
        consent.add("rh", None, effective, {"ai_generation": granted}, updated_at=updated, position=position)
    for at in range(7):
        live = [(e, u, p, g) for p, (e, u, g) in enumerate(records) if e <= at]
        expected = max(live)[3] if live else False
        assert consent.allowed("ai_generation", "rh", "wk", at) is expected
