"""Period statements per rights holder, DDEX-DSR-shaped, with a reconciliation check.

    python -m royalty.statement --period 2026-11 [--out artifacts/statements]   (make statement PERIOD=...)

Reads royalty.events.v1 and royalty.play-ledger.v1 with isolation.level=read_committed
(only committed transactions) up to their current ends, keeps plays that started in
the period (UTC), and writes one tab-separated report per rights holder and currency:

    HEAD  message version, sender, recipient, period start/end, ISO 4217 currency, created
    SY01  summary per right type: usage count (plays), amount
    AS01  detail per work and right type: usage count, amount
    FOOT  number of summary and detail records, total amount

Amounts are exact: integer micro-units and the same as a decimal string. The
reconciliation proves, per currency: detail = summary = footer for every report;
the reports' total = the lines' total = the ledger's PAID total = the sum of the
rate-card amounts of the paid plays (a catalog play's per-play amount; an AI segment's
per-minute amount times its ledgered ``paid_ms``, rounded as royalty rounds it); and every
paid play's lines sum to its ledger total.
"""

from __future__ import annotations

import argparse
import calendar
import json
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from kit.consumer import is_partition_eof, source_of
from kit.serde import DecodeError, TopicSerde
from kit.settings import REPO_ROOT, KafkaSettings
from royalty.rates import DEFAULT_RATE_CARD, RateCard
from royalty.rules import position

SENDER = "Entrain"
MESSAGE_VERSION = "entrain-dsr/1.0"


class ReconciliationError(AssertionError):
    """The statements do not add up."""


def period_bounds(period: str) -> tuple[int, int]:
    """[start, end) of a YYYY-MM period in epoch milliseconds, UTC."""
    try:
        year, month = (int(x) for x in period.split("-"))
        start = datetime(year, month, 1, tzinfo=UTC)
    except ValueError:
        raise SystemExit(f"--period must be YYYY-MM, got {period!r}") from None
    days = calendar.monthrange(year, month)[1]
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    assert (end - start).days == days
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def read_committed(kafka: KafkaSettings, logical_topic: str, skip_undecodable: bool = False) -> list[dict[str, Any]]:
    """Every committed value on a topic, from the beginning to its current end. A record that does not
    decode stops a statement (money would be missing from it) with where it is; callers that look
    only for records of their own (the demo's run) may skip them."""
    serde = TopicSerde.for_topic(logical_topic, kafka)
    consumer = Consumer({**kafka.client_config(), "group.id": f"statement-{uuid.uuid4().hex}",
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    partitions = consumer.list_topics(serde.topic, timeout=30).topics[serde.topic].partitions
    consumer.assign([TopicPartition(serde.topic, p, OFFSET_BEGINNING) for p in partitions])
    values: list[dict[str, Any]] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + 600
    while len(at_end) < len(partitions):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{serde.topic} not read to its end within 600s")
        for msg in consumer.consume(10_000, 0.5):
            if msg.error() is None:
                try:
                    value = serde.decode_value(msg.value())
                except DecodeError as exc:
                    if skip_undecodable:
                        continue
                    _, partition, offset = source_of(msg)
                    raise DecodeError(f"{serde.topic} partition {partition} offset {offset}: {exc} (records "
                                      "written before the schema registry: make clean starts afresh)") from None
                if value is not None:
                    values.append(value)
            elif is_partition_eof(msg):
                at_end.add(source_of(msg)[1])
    consumer.close()
    return values


def day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()


def decimal(micros: int) -> str:
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), 1_000_000)
    return f"{sign}{whole}.{frac:06d}"


@dataclass
class Report:
    rights_holder_id: str
    currency: str
    summary: dict[str, list[Any]] = field(default_factory=dict)  # right type -> [play ids, micros]
    detail: dict[tuple[str, str], list[Any]] = field(default_factory=dict)  # (work, right type) -> [play ids, micros]

    def add(self, line: dict[str, Any]) -> None:
        summary = self.summary.setdefault(line["right_type"], [set(), 0])
        summary[0].add(line["play_id"])
        summary[1] += line["amount_micros"]
        for part in line["works"]:
            detail = self.detail.setdefault((part["work_id"], line["right_type"]), [set(), 0])
            detail[0].add(line["play_id"])
            detail[1] += part["amount_micros"]

    @property
    def total(self) -> int:
        return sum(micros for _, micros in self.summary.values())

    def render(self, period: str, start_ms: int, end_ms: int) -> str:
        last_day = day(end_ms - 1)
        rows = [["HEAD", MESSAGE_VERSION, f"sender={SENDER}", f"recipient={self.rights_holder_id}",
                 f"period={period}", f"start={day(start_ms)}", f"end={last_day}", f"currency={self.currency}",
                 f"created={datetime.now(UTC).isoformat(timespec='seconds')}"]]
        rows.append(["#SY01", "summary_id", "right_type", "usage_count", "amount_micros", "amount"])
        for n, (right_type, (plays, micros)) in enumerate(sorted(self.summary.items()), 1):
            rows.append(["SY01", f"S{n}", right_type, str(len(plays)), str(micros), decimal(micros)])
        rows.append(["#AS01", "detail_id", "work_id", "right_type", "usage_count", "amount_micros", "amount"])
        for n, ((work, right_type), (plays, micros)) in enumerate(sorted(self.detail.items()), 1):
            rows.append(["AS01", f"D{n}", work, right_type, str(len(plays)), str(micros), decimal(micros)])
        rows.append(["FOOT", f"summary_records={len(self.summary)}", f"detail_records={len(self.detail)}",
                     f"total_amount_micros={self.total}", f"total_amount={decimal(self.total)}"])
        return "\n".join("\t".join(row) for row in rows) + "\n"

    def check(self) -> None:
        detail_total = sum(micros for _, micros in self.detail.values())
        if not detail_total == self.total:
            raise ReconciliationError(f"{self.rights_holder_id}/{self.currency}: detail {detail_total} != "
                                      f"summary {self.total}")


def measure(entry: dict[str, Any]) -> tuple[str, int, str]:
    """(usage, paid milliseconds, seed) of a PAID ledger entry, to price it again from the rate card."""
    seed = position(entry["source_partition"], entry["source_offset"])  # the seed royalty rounded with
    if entry.get("segment_id") is not None:
        return "AI_SEGMENT", entry["paid_ms"], seed
    return "CATALOG_WORK", 0, seed


def build(lines: list[dict[str, Any]], ledger: list[dict[str, Any]], rates: RateCard, start_ms: int,
          end_ms: int) -> tuple[dict[tuple[str, str], Report], dict[str, Any]]:
    """Reports per (rights holder, currency) and the reconciliation figures. Pure."""
    in_period = [x for x in lines if start_ms <= x["play_started_at"] < end_ms]
    paid = {e["play_id"]: e for e in ledger
            if e["outcome"] == "PAID" and start_ms <= e["play_started_at"] < end_ms}
    reports: dict[tuple[str, str], Report] = {}
    per_play: dict[str, int] = defaultdict(int)
    for line in in_period:
        key = (line["rights_holder_id"], line["currency"])
        reports.setdefault(key, Report(*key)).add(line)
        per_play[line["play_id"]] += line["amount_micros"]
    rate_by_id = {r.id: r for r in rates.rates}
    problems = []
    for report in reports.values():
        try:
            report.check()
        except ReconciliationError as exc:
            problems.append(str(exc))
    figures: dict[str, Any] = {"currencies": {}}
    for currency in sorted({c for _, c in reports} | {e["currency"] for e in paid.values()}):
        reports_total = sum(r.total for (_, c), r in reports.items() if c == currency)
        lines_total = sum(x["amount_micros"] for x in in_period if x["currency"] == currency)
        ledger_total = sum(e["total_micros"] for e in paid.values() if e["currency"] == currency)
        rates_total = sum(rate_by_id[e["rate_card_id"]].total_micros(*measure(e)) for e in paid.values()
                          if e["currency"] == currency)
        figures["currencies"][currency] = {
            "reports_micros": reports_total, "lines_micros": lines_total, "ledger_paid_micros": ledger_total,
            "paid_plays_x_rates_micros": rates_total,
            "paid_plays": sum(1 for e in paid.values() if e["currency"] == currency)}
        if not reports_total == lines_total == ledger_total == rates_total:
            problems.append(f"{currency}: reports {reports_total}, lines {lines_total}, ledger {ledger_total}, "
                            f"paid plays x rates {rates_total} differ")
    unledgered = set(per_play) - set(paid)
    if unledgered:
        problems.append(f"{len(unledgered)} plays have lines but no PAID ledger entry")
    wrong = [p for p, e in paid.items() if per_play.get(p, 0) != e["total_micros"]]
    if wrong:
        problems.append(f"{len(wrong)} paid plays whose lines do not sum to their ledger total (e.g. {wrong[0]})")
    figures |= {"reports": len(reports), "lines": len(in_period), "reconciled": not problems, "problems": problems}
    return reports, figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--period", required=True, help="YYYY-MM (UTC)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "artifacts" / "statements")
    parser.add_argument("--rate-card", type=Path, default=DEFAULT_RATE_CARD)
    args = parser.parse_args(argv)
    start_ms, end_ms = period_bounds(args.period)
    kafka = KafkaSettings.from_env()
    reports, figures = build(read_committed(kafka, "royalty.events.v1"),
                             read_committed(kafka, "royalty.play-ledger.v1"),
                             RateCard.load(args.rate_card), start_ms, end_ms)
    folder = args.out / args.period
    folder.mkdir(parents=True, exist_ok=True)
    for (holder, currency), report in sorted(reports.items()):
        (folder / f"{holder}_{currency}.tsv").write_text(report.render(args.period, start_ms, end_ms))
    (folder / "reconciliation.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"{len(reports)} statements for {args.period} in {folder}")
    for currency, f in figures["currencies"].items():
        print(f"  {currency}: {f['paid_plays']} paid plays, total {decimal(f['reports_micros'])} "
              f"(lines {decimal(f['lines_micros'])}, ledger {decimal(f['ledger_paid_micros'])}, "
              f"plays x rates {decimal(f['paid_plays_x_rates_micros'])})")
    print("reconciliation: " + ("OK" if figures["reconciled"] else "FAILED: " + "; ".join(figures["problems"])))
    return 0 if figures["reconciled"] else 1


if __name__ == "__main__":
    sys.exit(main())
