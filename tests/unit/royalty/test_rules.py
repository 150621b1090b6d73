"""The royalty rules over typed plays, works, segments and consent."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from royalty.history import PlayHistory
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
    remember,
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
SEGMENTS = {"seg-1": SegmentFacts(LISTENER, 40_000, (("wk-a", 500_000), ("wk-b", 300_000), ("wk-c", 200_000)),
                                  T0 - 60_000)}
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


def test_an_ai_play_pays_its_time_heard_exactly_across_all_holders() -> None:
    decision = decide(AI_PLAY, RATES, WORKS, SEGMENTS, everyone_consents(), PlayHistory(), "0:1")
    assert isinstance(decision, Paid)
    assert decision.rate.id == "eu-premium-2026" and decision.rate.currency == "EUR"
    # 45 s played of a 40 s segment: 40 s heard and paid at 429 + 714 µ€ a minute = 286 + 476
    assert (decision.heard_ms, decision.paid_ms) == (40_000, 40_000)
    assert total(decision) == 762
    by_key = {(line.rights_holder_id, line.right_type): line for line in decision.lines}
    # COMPOSITION 286: wk-a 143 -> rh-1; wk-b 85.8 -> rh-4; wk-c 57.2 -> rh-7 28.6, rh-1 28.6
    exact = {("rh-1", "COMPOSITION"): 171.6, ("rh-4", "COMPOSITION"): 85.8, ("rh-7", "COMPOSITION"): 28.6,
             ("rh-2", "RECORDING"): 142.8, ("rh-3", "RECORDING"): 95.2, ("rh-4", "RECORDING"): 142.8,
             ("rh-7", "RECORDING"): 95.2}
    assert set(by_key) == set(exact)
    for key, share in exact.items():
        assert abs(by_key[key].amount_micros - share) < 2  # two roundings (work, then holder): under 2 µ€
    for line in decision.lines:
        assert line.event_id == event_id(AI_PLAY.play_id, line.rights_holder_id, line.right_type)
        assert sum(a for _, a in line.works) == line.amount_micros


def test_a_catalog_play_pays_its_per_play_rate() -> None:
    play = replace(AI_PLAY, content_kind="CATALOG_WORK", segment_id=None, work_id="wk-b")
    decision = decide(play, RATES, WORKS, SEGMENTS, ConsentHistory(), PlayHistory(), "0:1")
    assert isinstance(decision, Paid) and (decision.heard_ms, decision.paid_ms) == (0, 0)
    assert {(x.rights_holder_id, x.right_type): x.amount_micros for x in decision.lines} == {
        ("rh-4", "COMPOSITION"): 1500, ("rh-4", "RECORDING"): 2500}


def test_an_opted_out_holder_s_work_is_removed_and_the_rest_renormalised() -> None:
    consent = everyone_consents()
    consent.add("rh-4", None, T0 - 1, {"ai_generation": False})  # rh-4 withdrew generation consent before the play
    decision = decide(AI_PLAY, RATES, WORKS, SEGMENTS, consent, PlayHistory(), "0:1")
    assert isinstance(decision, Paid) and total(decision) == 762
    assert all(line.rights_holder_id != "rh-4" for line in decision.lines)
    by_key = {(line.rights_holder_id, line.right_type): line.amount_micros for line in decision.lines}
    assert abs(by_key[("rh-1", "COMPOSITION")] - 286 * (5 / 7 + 1 / 7)) < 2  # wk-a 5/7, half of wk-c 2/7


def test_consent_applies_as_it_stood_at_play_time() -> None:
    consent = everyone_consents()
    consent.add("rh-4", None, T0 + 60_000, {"ai_generation": False})  # opted out one minute after the play started
    before = decide(AI_PLAY, RATES, WORKS, SEGMENTS, consent, PlayHistory(), "0:1")
    after = decide(replace(AI_PLAY, started_at=T0 + 120_000), RATES, WORKS, SEGMENTS, consent, PlayHistory(), "0:1")
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
    decision = decide(AI_PLAY, RATES, WORKS, SEGMENTS, ConsentHistory(), PlayHistory(), "0:1")
    assert decision == Unpaid("no_consenting_influence")


@pytest.mark.parametrize(("change", "seen", "expected"), [
    ({"content_kind": "CATALOG_WORK", "segment_id": None, "work_id": "wk-a", "ms_played": 29_999}, False,
     Unpaid("short_play")),
    ({"fraud_flags": ("burst_rate",)}, False, Unpaid("fraud_flagged")),
    ({}, True, Unpaid("duplicate_play")),
    ({"segment_id": "seg-unknown"}, False, Waiting("segment_provenance_unknown")),
    ({"content_kind": "CATALOG_WORK", "segment_id": None, "work_id": "wk-unknown"}, False, Waiting("work_unknown")),
])
def test_ineligible_and_waiting_plays(change: dict, seen: bool, expected: object) -> None:
    history = PlayHistory()
    if seen:
        history.decided(AI_PLAY.play_id, 0)
    assert decide(replace(AI_PLAY, **change), RATES, WORKS, SEGMENTS, everyone_consents(), history, "0:1") == expected


def test_a_partly_heard_ai_segment_pays_the_time_heard() -> None:
    short = {"seg-1": replace(SEGMENTS["seg-1"], duration_ms=3_200)}
    skipped = decide(replace(AI_PLAY, ms_played=1_000, completed=False), RATES, WORKS, short, everyone_consents(),
                     PlayHistory(), "0:1")
    assert isinstance(skipped, Paid) and skipped.paid_ms == 1_000
    assert total(skipped) in (19, 20)  # 1,143 µ€ a minute for one second: 19.05
    nearly = replace(AI_PLAY, ms_played=2_950, completed=True)  # within the 250 ms slack
    decision = decide(nearly, RATES, WORKS, short, everyone_consents(), PlayHistory(), "0:1")
    assert isinstance(decision, Paid) and decision.paid_ms == 2_950


@pytest.mark.parametrize(("change", "reason"), [
    ({"ms_played": 0, "completed": True}, "not_heard"),  # "completed" with nothing heard: farming
    ({"ms_played": 2_900, "completed": True}, "not_heard"),  # 300 ms short of a 3.2 s segment
    ({"ms_played": 0, "completed": False}, "not_heard"),
    ({"listener_id": "m" * 64, "ms_played": 3_200, "completed": True}, "not_delivered_to_listener"),
    ({"started_at": T0 - 3_600_000}, "played_before_generated"),  # an hour before the segment existed
    ({"started_at": T0 + 2 * 86_400_000}, "played_after_window"),  # one segment spread over later days
])
def test_an_ai_play_pays_only_what_was_delivered_to_that_listener_and_heard(change: dict, reason: str) -> None:
    short = {"seg-1": replace(SEGMENTS["seg-1"], duration_ms=3_200, generated_at=T0 - 1_000)}
    assert decide(replace(AI_PLAY, **change), RATES, WORKS, short, everyone_consents(), PlayHistory(), "0:1") == \
        Unpaid(reason)


def test_a_listener_s_paid_time_never_overlaps() -> None:
    """The same seconds posted again under other play ids (or other segments) pay once."""
    segments = {f"seg-{n}": SegmentFacts(LISTENER, 3_000, (("wk-a", 1_000_000),), T0) for n in range(3)}
    history, consent = PlayHistory(), everyone_consents()

    def play(n: int, segment: int, start: int, ms: int = 3_000) -> Paid | Unpaid | Waiting:
        p = replace(AI_PLAY, play_id=f"p-{n}", segment_id=f"seg-{segment}", started_at=T0 + start, ms_played=ms,
                    completed=ms == 3_000)
        decision = decide(p, RATES, WORKS, segments, consent, history, f"0:{n}")
        remember(history, p, decision, partition=0)
        return decision

    first = play(1, 0, 0)
    assert isinstance(first, Paid) and first.paid_ms == 3_000
    assert play(2, 1, 0) == Unpaid("overlaps_paid_time")  # another segment "in parallel"
    again = play(3, 0, 1_000)  # the same segment heard again from 1 s: only [3 s, 4 s) is new
    assert isinstance(again, Paid) and again.paid_ms == 1_000
    later = play(4, 2, 6_000)
    assert isinstance(later, Paid) and later.paid_ms == 3_000
    overlapping = play(5, 1, 4_500)  # [4.5 s, 7.5 s): 4.5-6 s is new, 6-7.5 s was paid
    assert isinstance(overlapping, Paid) and overlapping.paid_ms == 1_500


def test_an_erased_listener_s_earlier_plays_pay_nothing_and_their_paid_time_is_forgotten() -> None:
    history = PlayHistory()
    history.paid(LISTENER, T0, T0 + 40_000, 0)
    history.commit()
    erased_at = T0 + 100_000
    decision = decide(AI_PLAY, RATES, WORKS, SEGMENTS, everyone_consents(), history, "0:1",
                      erased=lambda listener, at: listener == LISTENER and at <= erased_at)
    assert decision == Unpaid("listener_erased")
    history.forget(LISTENER)
    assert history.unpaid_ms(LISTENER, T0, T0 + 40_000) == 40_000


def test_paid_time_rolls_back_with_an_aborted_batch() -> None:
    history = PlayHistory()
    history.paid(LISTENER, 0, 1_000, 0)
    history.commit()
    history.paid(LISTENER, 1_000, 5_000, 0)
    history.decided("p-x", 0)
    assert history.unpaid_ms(LISTENER, 0, 5_000) == 0 and history.seen("p-x")
    history.rollback()
    assert history.unpaid_ms(LISTENER, 0, 5_000) == 4_000 and not history.seen("p-x")
    history.drop_partitions({0})
    assert history.unpaid_ms(LISTENER, 0, 5_000) == 5_000


def test_a_catalog_play_splits_by_the_work_s_shares_without_consent() -> None:
    play = replace(AI_PLAY, content_kind="CATALOG_WORK", segment_id=None, work_id="wk-a", territory="US",
                   subscription_tier="FREE")
    decision = decide(play, RATES, WORKS, SEGMENTS, ConsentHistory(), PlayHistory(), "0:1")
    assert isinstance(decision, Paid) and decision.rate.currency == "USD"
    assert {(line.rights_holder_id, line.right_type): line.amount_micros for line in decision.lines} == {
        ("rh-1", "COMPOSITION"): 450, ("rh-2", "RECORDING"): 390, ("rh-3", "RECORDING"): 260}


def test_the_rate_card_prices_by_territory_tier_and_date() -> None:
    assert RATES.price("FR", "PREMIUM", T0).id == "eu-premium-2026"
    assert RATES.price("JP", "PREMIUM", T0).id == "world-all-2026"
    with pytest.raises(RateCardMissing, match="territory DE, tier PREMIUM"):
        RATES.price("DE", "PREMIUM", 0)  # before every entry took effect
    rate = RATES.price("DE", "PREMIUM", T0)
    assert rate.amounts("CATALOG_WORK", 0, "p") == (("COMPOSITION", 1500), ("RECORDING", 2500))
    assert rate.amounts("AI_SEGMENT", 60_000, "p") == (("COMPOSITION", 429), ("RECORDING", 714))
    with pytest.raises(RateCardMissing, match="no tariff for COMPOSER_LICENCE"):
        rate.amounts("COMPOSER_LICENCE", 0, "p")

    def entry(**tariffs: object) -> dict:
        return {"entries": [{"id": "x", "territories": ["*"], "tiers": ["FREE"], "currency": "EUR",
                             "effective_from": "2026-01-01T00:00:00Z", "tariffs": tariffs}]}

    with pytest.raises(RateCardError, match="micros needs exactly"):
        RateCard.parse(entry(AI_SEGMENT={"per": "minute", "micros": {"COMPOSITION": 1}}))
    with pytest.raises(RateCardError, match="non-negative integers"):
        RateCard.parse(entry(AI_SEGMENT={"per": "minute", "micros": {"COMPOSITION": 1.5, "RECORDING": 1}}))
    with pytest.raises(RateCardError, match="per must be one of"):
        RateCard.parse(entry(AI_SEGMENT={"per": "fortnight", "micros": {"COMPOSITION": 1, "RECORDING": 1}}))
    with pytest.raises(RateCardError, match="tariffs must map usages"):
        RateCard.parse(entry())


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
    """...whatever the weights and consent: the lines add up to the per-minute rate times the time paid."""
    works = ["wk-a", "wk-b", "wk-c"][: len(weights)]
    scaled = [w * 1_000_000 // sum(weights) for w in weights]
    scaled[0] += 1_000_000 - sum(scaled)
    segments = {"seg-x": SegmentFacts(LISTENER, 3_200, tuple(zip(works, scaled, strict=True)), T0)}
    consent = everyone_consents()
    for holder in opted_out:
        consent.add(holder, None, T0 - 1, {"ai_generation": False})
    play = replace(AI_PLAY, play_id=f"p-{n}", segment_id="seg-x")
    decision = decide(play, RATES, WORKS, segments, consent, PlayHistory(), "0:1")
    if isinstance(decision, Paid):
        assert total(decision) == decision.rate.total_micros("AI_SEGMENT", 3_200, "0:1")
        assert abs(total(decision) - 1143 * 3_200 / 60_000) < 2  # 60.96 µ€, one rounding per right type
        assert not {line.rights_holder_id for line in decision.lines} & opted_out
    else:
        assert decision == Unpaid("no_consenting_influence")
