"""The royalty rules over typed plays, works, segments and consent."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from royalty.rates import RateCard, RateCardError, RateCardMissing
from royalty.rules import (
    ConsentHistory,
    InvalidReference,
    Paid,
    Play,
    SegmentFacts,
    Unpaid,
    Waiting,
    WorkShares,
    decide,
    event_id,
    influences_from_record,
)

T0 = 1_795_000_000_000
RATES = RateCard.load()
WORKS = {
    "wk-a": WorkShares("wk-a", {"COMPOSITION": (("rh-1", 1_000_000),),
                                "RECORDING": (("rh-2", 600_000), ("rh-3", 400_000))}),
    "wk-b": WorkShares("wk-b", {"COMPOSITION": (("rh-4", 1_000_000),), "RECORDING": (("rh-4", 1_000_000),)}),
    "wk-c": WorkShares("wk-c", {"COMPOSITION": (("rh-7", 500_000), ("rh-1", 500_000)),
                                "RECORDING": (("rh-7", 1_000_000),)}),
}
LISTENER = "l" * 64
SEGMENTS = {"seg-1": SegmentFacts(LISTENER, 40_000, (("wk-a", 500_000), ("wk-b", 300_000), ("wk-c", 200_000)))}
AI_PLAY = Play("c8e2f0a4-0000-4c5e-8f7a-6b9d0e1f2a3b", "AI_SEGMENT", "seg-1", None, T0, 45_000, "DE", "PREMIUM", (),
               listener_id=LISTENER)


def everyone_consents() -> ConsentHistory:
    consent = ConsentHistory()
    for holder in ("rh-1", "rh-2", "rh-3", "rh-4", "rh-7"):
        consent.add(holder, None, 0, {"ai_generation": True})
    return consent


def total(decision) -> int:  # type: ignore[no-untyped-def]
    assert isinstance(decision, Paid)
    return sum(line.amount_micros for line in decision.lines)


def test_an_ai_play_pays_its_rate_exactly_across_all_holders() -> None:
    decision = decide(AI_PLAY, RATES, WORKS, SEGMENTS, everyone_consents(), seen_before=False)
    assert isinstance(decision, Paid)
    assert decision.rate.id == "eu-premium-2026" and decision.rate.currency == "EUR"
    assert total(decision) == 4000
    by_key = {(line.rights_holder_id, line.right_type): line for line in decision.lines}
    # COMPOSITION 1500: wk-a 750 -> rh-1; wk-b 450 -> rh-4; wk-c 300 -> rh-7 150, rh-1 150
    assert by_key[("rh-1", "COMPOSITION")].amount_micros == 900
    assert dict(by_key[("rh-1", "COMPOSITION")].works) == {"wk-a": 750, "wk-c": 150}
    assert by_key[("rh-4", "COMPOSITION")].amount_micros == 450
    # RECORDING 2500: wk-a 1250 -> rh-2 750, rh-3 500; wk-b 750 -> rh-4; wk-c 500 -> rh-7
    assert by_key[("rh-2", "RECORDING")].amount_micros == 750
    assert by_key[("rh-3", "RECORDING")].amount_micros == 500
    for line in decision.lines:
        assert line.event_id == event_id(AI_PLAY.play_id, line.rights_holder_id, line.right_type)
        assert sum(a for _, a in line.works) == line.amount_micros


def test_an_opted_out_holder_s_work_is_removed_and_the_rest_renormalised() -> None:
    consent = everyone_consents()
    consent.add("rh-4", None, T0 - 1, {"ai_generation": False})  # rh-4 withdrew generation consent before the play
    decision = decide(AI_PLAY, RATES, WORKS, SEGMENTS, consent, seen_before=False)
    assert isinstance(decision, Paid) and total(decision) == 4000
    assert all(line.rights_holder_id != "rh-4" for line in decision.lines)
    by_key = {(line.rights_holder_id, line.right_type): line.amount_micros for line in decision.lines}
    assert by_key[("rh-1", "COMPOSITION")] == 1500 * 5 // 7 + 1500 * 2 // 7 // 2  # wk-a 5/7, half of wk-c 2/7


def test_consent_applies_as_it_stood_at_play_time() -> None:
    consent = everyone_consents()
    consent.add("rh-4", None, T0 + 60_000, {"ai_generation": False})  # opted out one minute after the play started
    before = decide(AI_PLAY, RATES, WORKS, SEGMENTS, consent, seen_before=False)
    after = decide(replace(AI_PLAY, started_at=T0 + 120_000), RATES, WORKS, SEGMENTS, consent, seen_before=False)
    assert any(line.rights_holder_id == "rh-4" for line in before.lines)  # type: ignore[union-attr]
    assert all(line.rights_holder_id != "rh-4" for line in after.lines)  # type: ignore[union-attr]


def test_a_per_work_record_overrides_the_catalog_wide_one_and_no_record_means_no_consent() -> None:
    consent = everyone_consents()
    consent.add("rh-7", "wk-c", T0 - 10, {"ai_generation": False})
    assert not consent.generation_allowed("rh-7", "wk-c", T0)
    assert consent.generation_allowed("rh-7", "wk-other", T0)
    assert not ConsentHistory().generation_allowed("rh-1", "wk-a", T0)
    consent.withdraw("rh-1", None, T0 - 5)
    assert not consent.generation_allowed("rh-1", "wk-a", T0)


def test_no_consenting_influence_pays_nothing() -> None:
    decision = decide(AI_PLAY, RATES, WORKS, SEGMENTS, ConsentHistory(), seen_before=False)
    assert decision == Unpaid("no_consenting_influence")


@pytest.mark.parametrize(("change", "seen", "expected"), [
    ({"ms_played": 29_999, "completed": False}, False, Unpaid("short_play")),
    ({"fraud_flags": ("burst_rate",)}, False, Unpaid("fraud_flagged")),
    ({}, True, Unpaid("duplicate_play")),
    ({"segment_id": "seg-unknown"}, False, Waiting("segment_provenance_unknown")),
    ({"content_kind": "CATALOG_WORK", "segment_id": None, "work_id": "wk-unknown"}, False, Waiting("work_unknown")),
])
def test_ineligible_and_waiting_plays(change: dict, seen: bool, expected: object) -> None:
    assert decide(replace(AI_PLAY, **change), RATES, WORKS, SEGMENTS, everyone_consents(), seen) == expected


def test_a_short_ai_segment_heard_to_the_end_pays_and_a_short_catalog_play_does_not() -> None:
    short = {"seg-1": replace(SEGMENTS["seg-1"], duration_ms=3_200)}
    segment = replace(AI_PLAY, ms_played=3_200, completed=True)
    assert isinstance(decide(segment, RATES, WORKS, short, everyone_consents(), False), Paid)
    nearly = replace(AI_PLAY, ms_played=2_950, completed=True)  # within the 250 ms slack
    assert isinstance(decide(nearly, RATES, WORKS, short, everyone_consents(), False), Paid)
    catalog = replace(AI_PLAY, content_kind="CATALOG_WORK", segment_id=None, work_id="wk-a", ms_played=3_200,
                      completed=True)
    assert decide(catalog, RATES, WORKS, SEGMENTS, everyone_consents(), False) == Unpaid("short_play")


@pytest.mark.parametrize(("change", "reason"), [
    ({"ms_played": 0, "completed": True}, "not_heard"),  # "completed" with nothing heard: farming
    ({"ms_played": 2_900, "completed": True}, "not_heard"),  # 300 ms short of a 3.2 s segment
    ({"listener_id": "m" * 64, "ms_played": 3_200, "completed": True}, "not_delivered_to_listener"),
])
def test_an_ai_play_pays_only_what_was_delivered_to_that_listener_and_heard(change: dict, reason: str) -> None:
    short = {"seg-1": replace(SEGMENTS["seg-1"], duration_ms=3_200)}
    assert decide(replace(AI_PLAY, **change), RATES, WORKS, short, everyone_consents(), False) == Unpaid(reason)


def test_a_catalog_play_splits_by_the_work_s_shares_without_consent() -> None:
    play = replace(AI_PLAY, content_kind="CATALOG_WORK", segment_id=None, work_id="wk-a", territory="US",
                   subscription_tier="FREE")
    decision = decide(play, RATES, WORKS, SEGMENTS, ConsentHistory(), seen_before=False)
    assert isinstance(decision, Paid) and decision.rate.currency == "USD"
    assert {(line.rights_holder_id, line.right_type): line.amount_micros for line in decision.lines} == {
        ("rh-1", "COMPOSITION"): 450, ("rh-2", "RECORDING"): 390, ("rh-3", "RECORDING"): 260}


def test_the_rate_card_prices_by_territory_tier_and_date() -> None:
    assert RATES.price("FR", "PREMIUM", T0).id == "eu-premium-2026"
    assert RATES.price("JP", "PREMIUM", T0).id == "world-all-2026"
    with pytest.raises(RateCardMissing, match="territory DE, tier PREMIUM"):
        RATES.price("DE", "PREMIUM", 0)  # before every entry took effect
    with pytest.raises(RateCardError, match="per_play_micros needs exactly"):
        RateCard.parse({"entries": [{"id": "x", "territories": ["*"], "tiers": ["FREE"], "currency": "EUR",
                                     "effective_from": "2026-01-01T00:00:00Z", "per_play_micros": {"COMPOSITION": 1}}]})
    with pytest.raises(RateCardError, match="non-negative integers"):
        RateCard.parse({"entries": [{"id": "x", "territories": ["*"], "tiers": ["FREE"], "currency": "EUR",
                                     "effective_from": "2026-01-01T00:00:00Z",
                                     "per_play_micros": {"COMPOSITION": 1.5, "RECORDING": 1}}]})


def test_malformed_reference_records_are_refused() -> None:
    with pytest.raises(InvalidReference, match="RECORDING shares sum to 900000"):
        WorkShares.from_record({"work_id": "w", "shares": [
            {"rights_holder_id": "a", "right_type": "COMPOSITION", "share_ppm": 1_000_000},
            {"rights_holder_id": "b", "right_type": "RECORDING", "share_ppm": 900_000}]})
    with pytest.raises(InvalidReference, match="sum to 999999"):
        influences_from_record({"segment_id": "s", "provenance": {"influences": [
            {"work_id": "w", "weight_ppm": 999_999}]}})


@given(weights=st.lists(st.integers(1, 1000), min_size=1, max_size=3), n=st.integers(0, 10**6),
       opted_out=st.sets(st.sampled_from(["rh-1", "rh-2", "rh-3", "rh-4", "rh-7"])))
def test_every_paid_play_sums_exactly_to_its_rate(weights: list[int], n: int, opted_out: set[str]) -> None:
    works = ["wk-a", "wk-b", "wk-c"][: len(weights)]
    scaled = [w * 1_000_000 // sum(weights) for w in weights]
    scaled[0] += 1_000_000 - sum(scaled)
    segments = {"seg-x": SegmentFacts(LISTENER, 3_200, tuple(zip(works, scaled, strict=True)))}
    consent = everyone_consents()
    for holder in opted_out:
        consent.add(holder, None, T0 - 1, {"ai_generation": False})
    play = replace(AI_PLAY, play_id=f"p-{n}", segment_id="seg-x")
    decision = decide(play, RATES, WORKS, segments, consent, seen_before=False)
    if isinstance(decision, Paid):
        assert total(decision) == decision.rate.total_micros
        assert not {line.rights_holder_id for line in decision.lines} & opted_out
    else:
        assert decision == Unpaid("no_consenting_influence")
