"""The rate card: what a use of music pays, per right type, by territory, tier, date and usage.

A ``Rate`` (one entry of the card) holds one ``Tariff`` per usage (``CATALOG_WORK``,
``AI_SEGMENT``, ...): micro-units per right type, charged per play or per minute heard.
``Rate.amounts`` turns a usage and its measure into whole micro-units per right type;
per-minute amounts are rounded without bias (``royalty.money.scale``) and seeded by the play,
so the royalty service and a statement's reconciliation compute the same figure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from royalty.money import scale

RIGHT_TYPES = ("COMPOSITION", "RECORDING")
UNITS = {"play": None, "minute": 60_000}  # unit -> milliseconds per unit (None: a flat amount per play)
TRACK_MINUTES = 3.5  # the catalog track length the AI per-minute rates are at parity with (rate_card.yaml)
DEFAULT_RATE_CARD = Path(__file__).with_name("rate_card.yaml")


class RateCardError(ValueError):
    """The rate card file is malformed."""


class RateCardMissing(LookupError):
    """No rate card entry prices this play (territory, tier, time)."""


@dataclass(frozen=True)
class Tariff:
    per: str  # a key of UNITS
    micros: tuple[tuple[str, int], ...]  # (right type, micros per unit), in RIGHT_TYPES order


@dataclass(frozen=True)
class Rate:
    id: str
    territories: frozenset[str]
    tiers: frozenset[str]
    currency: str
    effective_from_ms: int
    tariffs: tuple[tuple[str, Tariff], ...]  # (usage, tariff)

    def tariff(self, usage: str) -> Tariff:
        for name, tariff in self.tariffs:
            if name == usage:
                return tariff
        raise RateCardMissing(f"rate {self.id} has no tariff for {usage}")

    def amounts(self, usage: str, paid_ms: int, seed: str) -> tuple[tuple[str, int], ...]:
        """(right type, micro-units) for one use: a flat amount per play, or pro rata to ``paid_ms``."""
        tariff = self.tariff(usage)
        unit_ms = UNITS[tariff.per]
        if unit_ms is None:
            return tariff.micros
        return tuple((rt, scale(micros, paid_ms, unit_ms, f"{seed}/minutes/{rt}")) for rt, micros in tariff.micros)

    def total_micros(self, usage: str, paid_ms: int, seed: str) -> int:
        return sum(amount for _, amount in self.amounts(usage, paid_ms, seed))


@dataclass(frozen=True)
class RateCard:
    rates: tuple[Rate, ...]

    def price(self, territory: str, tier: str, at_ms: int) -> Rate:
        """The entry that prices a play: exact territory over "*", then the latest in effect."""
        candidates = [r for r in self.rates if tier in r.tiers and r.effective_from_ms <= at_ms
                      and (territory in r.territories or "*" in r.territories)]
        if not candidates:
            raise RateCardMissing(f"no rate for territory {territory}, tier {tier} at {at_ms}")
        return max(candidates, key=lambda r: (territory in r.territories, r.effective_from_ms))

    @classmethod
    def load(cls, path: Path = DEFAULT_RATE_CARD) -> RateCard:
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise RateCardError(f"cannot read rate card {path}: {exc}") from None
        return cls.parse(raw, str(path))

    @classmethod
    def parse(cls, raw: Any, source: str = "rate card") -> RateCard:
        if not isinstance(raw, dict) or not isinstance(raw.get("entries"), list) or not raw["entries"]:
            raise RateCardError(f"{source}: needs a non-empty 'entries' list")
        rates, ids = [], set()
        for n, entry in enumerate(raw["entries"]):
            where = f"{source}: entry {n} ({entry.get('id', '?') if isinstance(entry, dict) else '?'})"
            try:
                if not isinstance(entry["tariffs"], dict) or not entry["tariffs"]:
                    raise RateCardError(f"{where}: tariffs must map usages to {{per, micros}}")
                tariffs = tuple((str(usage), parse_tariff(tariff, f"{where}, tariff {usage}"))
                                for usage, tariff in sorted(entry["tariffs"].items()))
                currency = entry["currency"]
                if not (isinstance(currency, str) and len(currency) == 3 and currency.isupper()):
                    raise RateCardError(f"{where}: currency must be an ISO 4217 code like EUR")
                effective = datetime.fromisoformat(str(entry["effective_from"]).replace("Z", "+00:00"))
                if effective.tzinfo is None:
                    raise RateCardError(f"{where}: effective_from needs a time zone")
                rate = Rate(
                    id=str(entry["id"]), territories=frozenset(entry["territories"]),
                    tiers=frozenset(entry["tiers"]), currency=currency,
                    effective_from_ms=int(effective.timestamp() * 1000),
                    tariffs=tariffs,
                )
            except (KeyError, TypeError, ValueError) as exc:
                if isinstance(exc, RateCardError):
                    raise
                raise RateCardError(f"{where}: {type(exc).__name__}: {exc}") from None
            if rate.id in ids:
                raise RateCardError(f"{where}: duplicate id")
            ids.add(rate.id)
            rates.append(rate)
        return cls(tuple(rates))


def parse_tariff(raw: Any, where: str) -> Tariff:
    if not isinstance(raw, dict) or set(raw) != {"per", "micros"}:
        raise RateCardError(f"{where}: needs exactly 'per' and 'micros'")
    if raw["per"] not in UNITS:
        raise RateCardError(f"{where}: per must be one of {sorted(UNITS)}, not {raw['per']!r}")
    amounts = raw["micros"]
    if not isinstance(amounts, dict) or set(amounts) != set(RIGHT_TYPES):
        raise RateCardError(f"{where}: micros needs exactly {RIGHT_TYPES}")
    if not all(isinstance(a, int) and not isinstance(a, bool) and a >= 0 for a in amounts.values()):
        raise RateCardError(f"{where}: amounts must be non-negative integers (micro-units)")
    return Tariff(raw["per"], tuple((rt, amounts[rt]) for rt in RIGHT_TYPES))


def main(argv: list[str] | None = None) -> int:
    """python -m royalty.rates [--minutes 30]: what that much listening pays under every entry, AI
    music (its per-minute tariff) next to catalog tracks of TRACK_MINUTES (per play)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate-card", type=Path, default=DEFAULT_RATE_CARD)
    args = parser.parse_args(argv)
    ms = round(args.minutes * 60_000)
    plays = args.minutes / TRACK_MINUTES
    print(f"{args.minutes:g} minutes of listening ({plays:.2f} catalog plays of {TRACK_MINUTES} minutes):")
    print(f"{'entry':16s} {'cur':3s} {'AI music':>10s} {'catalog':>10s}   AI split (composition / recording)")
    for rate in RateCard.load(args.rate_card).rates:
        ai = dict(rate.amounts("AI_SEGMENT", ms, "quote"))
        catalog = sum(amount for _, amount in rate.amounts("CATALOG_WORK", 0, "quote")) * plays
        print(f"{rate.id:16s} {rate.currency:3s} {sum(ai.values()) / 1e6:10.6f} {catalog / 1e6:10.6f}   "
              f"{ai['COMPOSITION'] / 1e6:.6f} / {ai['RECORDING'] / 1e6:.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
