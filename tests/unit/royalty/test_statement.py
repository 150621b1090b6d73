"""Statements add up, and the reconciliation notices when they do not."""

from __future__ import annotations

from typing import Any

from royalty.rates import RateCard
from royalty.statement import build, decimal, period_bounds

RATES = RateCard.load()
START, END = period_bounds("2026-11")


def line(play: str, holder: str, right_type: str, micros: int, works: dict[str, int]) -> dict[str, Any]:
    return {"play_id": play, "rights_holder_id": holder, "right_type": right_type, "amount_micros": micros,
            "currency": "EUR", "works": [{"work_id": w, "amount_micros": a} for w, a in works.items()],
            "play_started_at": START + 1000}


def ledger(play: str, total: int, offset: int = 0) -> dict[str, Any]:
    return {"play_id": play, "outcome": "PAID", "total_micros": total, "currency": "EUR",
            "rate_card_id": "eu-premium-2026", "play_started_at": START + 1000, "source_partition": 0,
            "source_offset": offset}


LINES = [
    line("p1", "rh-1", "COMPOSITION", 1500, {"wk-a": 1000, "wk-b": 500}),
    line("p1", "rh-2", "RECORDING", 2500, {"wk-a": 2500}),
    line("p2", "rh-1", "COMPOSITION", 1500, {"wk-a": 1500}),
    line("p2", "rh-2", "RECORDING", 2500, {"wk-a": 2500}),
]
LEDGER = [ledger("p1", 4000), ledger("p2", 4000)]


def test_period_bounds_are_utc_months() -> None:
    assert period_bounds("2026-12") == (1796083200000, 1798761600000)
    assert decimal(4000) == "0.004000" and decimal(12_345_678) == "12.345678"


def test_reports_reconcile_with_the_ledger_and_the_rate_card() -> None:
    reports, figures = build(LINES, LEDGER, RATES, START, END)
    assert figures["reconciled"], figures["problems"]
    rh1 = reports[("rh-1", "EUR")]
    assert rh1.total == 3000
    assert {k: (len(v[0]), v[1]) for k, v in rh1.detail.items()} == {
        ("wk-a", "COMPOSITION"): (2, 2500), ("wk-b", "COMPOSITION"): (1, 500)}
    text = rh1.render("2026-11", START, END)
    assert text.splitlines()[0].startswith("HEAD\tentrain-dsr/1.0\tsender=Entrain\trecipient=rh-1\tperiod=2026-11")
    assert "currency=EUR" in text and text.splitlines()[-1].startswith("FOOT\tsummary_records=1\tdetail_records=2")
    assert figures["currencies"]["EUR"]["paid_plays_x_rates_micros"] == 8000


def test_a_missing_line_or_a_wrong_amount_fails_the_reconciliation() -> None:
    _, missing = build(LINES[:-1], LEDGER, RATES, START, END)
    assert not missing["reconciled"]
    assert any("differ" in p for p in missing["problems"])
    tampered = [*LINES[:-1], {**LINES[-1], "works": [{"work_id": "wk-a", "amount_micros": 2499}]}]
    _, figures = build(tampered, LEDGER, RATES, START, END)
    assert any("rh-2/EUR: detail 4999 != summary 5000" in p for p in figures["problems"])


def test_lines_outside_the_period_are_left_out() -> None:
    later = [{**x, "play_started_at": END} for x in LINES]
    reports, figures = build(later, [], RATES, START, END)
    assert reports == {} and figures["reconciled"]


def test_time_priced_ai_plays_reconcile_against_the_per_minute_rate() -> None:
    rate = RATES.price("DE", "PREMIUM", START + 1000)
    amounts = dict(rate.amounts("AI_SEGMENT", 3_000, "0:7"))  # 3 s at 429 + 714 µ€ a minute: 21.45 + 35.7
    lines = [line("p3", "rh-1", "COMPOSITION", amounts["COMPOSITION"], {"wk-a": amounts["COMPOSITION"]}),
             line("p3", "rh-2", "RECORDING", amounts["RECORDING"], {"wk-a": amounts["RECORDING"]})]
    entry = {**ledger("p3", sum(amounts.values()), offset=7),  # the play's position seeds the rounding
             "segment_id": "seg-1", "heard_ms": 3_000, "paid_ms": 3_000}
    _, figures = build(lines, [entry], RATES, START, END)
    assert figures["reconciled"], figures["problems"]
    assert figures["currencies"]["EUR"]["paid_plays_x_rates_micros"] in (56, 57, 58)
    _, overpaid = build(lines, [{**entry, "paid_ms": 2_000}], RATES, START, END)  # lines for more than was paid
    assert not overpaid["reconciled"]
