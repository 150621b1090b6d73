"""The rate card: what one eligible play pays, per right type, by territory, tier and date."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

RIGHT_TYPES = ("COMPOSITION", "RECORDING")
DEFAULT_RATE_CARD = Path(__file__).with_name("rate_card.yaml")


class RateCardError(ValueError):
    """The rate card file is malformed."""


class RateCardMissing(LookupError):
    """No rate card entry prices this play (territory, tier, time)."""


@dataclass(frozen=True)
class Rate:
    id: str
    territories: frozenset[str]
    tiers: frozenset[str]
    currency: str
    effective_from_ms: int
    per_play_micros: tuple[tuple[str, int], ...]  # (right type, micros), in RIGHT_TYPES order

    @property
    def total_micros(self) -> int:
        return sum(amount for _, amount in self.per_play_micros)


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
                amounts = entry["per_play_micros"]
                if set(amounts) != set(RIGHT_TYPES):
                    raise RateCardError(f"{where}: per_play_micros needs exactly {RIGHT_TYPES}")
                if not all(isinstance(a, int) and not isinstance(a, bool) and a >= 0 for a in amounts.values()):
                    raise RateCardError(f"{where}: amounts must be non-negative integers (micro-units)")
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
                    per_play_micros=tuple((rt, amounts[rt]) for rt in RIGHT_TYPES),
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
