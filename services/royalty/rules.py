"""The royalty rules: a play in, royalty lines (or a reason for none) out. Pure.

For an eligible play priced at A_rt micro-units per right type rt (rate card):

* **AI segment** — A_rt is split across the segment's influencing works by their
  influence weights, after removing every work with a rights holder who had not
  granted AI-generation consent at play time (``kit.consent``: opt-in, no record
  means no consent); the remaining weights are renormalised by the split itself.
* **Catalog work** — the whole A_rt goes to the work.
* Each work's part of A_rt is split across the work's rights holders for rt by
  their shares (ppm).

Both splits use largest remainder seeded by the play id, so every play's lines
sum exactly to its rate and each payee is within one micro-unit of its exact
share. Lines are aggregated per (rights holder, right type) with a per-work
breakdown, and carry a deterministic event id.

Ineligible plays pay nothing: shorter than 30 s, fraud-flagged, a play id seen
before, or no consenting influence left. An AI-segment play pays only for a segment
that was delivered to that same listener (``not_delivered_to_listener``) and, when it
claims ``completed``, only if ``ms_played`` covers the segment to within
``HEARD_SLACK_MS`` (``not_heard``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kit.consent import ConsentHistory
from royalty.money import split_by_largest_remainder
from royalty.rates import RIGHT_TYPES, Rate, RateCard

MIN_PLAY_MS = 30_000
HEARD_SLACK_MS = 250  # a player's clock and the segment's rounding: "to the end" within a quarter second
PPM = 1_000_000


class InvalidReference(ValueError):
    """A works or segments record is malformed (shares or weights do not sum to 1,000,000)."""


@dataclass(frozen=True, slots=True)
class Play:
    play_id: str
    content_kind: str
    segment_id: str | None
    work_id: str | None
    started_at: int
    ms_played: int
    territory: str
    subscription_tier: str
    fraud_flags: tuple[str, ...]
    completed: bool = False
    listener_id: str = ""

    @classmethod
    def from_record(cls, value: Mapping[str, Any]) -> Play:
        return cls(value["play_id"], value["content_kind"], value["segment_id"], value["work_id"],
                   value["started_at"], value["ms_played"], value["territory"], value["subscription_tier"],
                   tuple(value["fraud_flags"]), bool(value["completed"]), value["listener_id"])


@dataclass(frozen=True, slots=True)
class SegmentFacts:
    """What royalty keeps of a delivered segment: whose it is, how long, what influenced it."""

    listener_id: str
    duration_ms: int
    influences: tuple[tuple[str, int], ...]
    generated_at: int = 0

    @classmethod
    def from_record(cls, value: Mapping[str, Any]) -> SegmentFacts:
        return cls(value["listener_id"], int(value["audio"]["duration_ms"]), influences_from_record(value),
                   int(value["generated_at"]))


@dataclass(frozen=True, slots=True)
class WorkShares:
    """A work's rights holders: right type -> ((rights holder, share ppm), ...)."""

    work_id: str
    by_right: Mapping[str, tuple[tuple[str, int], ...]]

    @property
    def rights_holders(self) -> frozenset[str]:
        return frozenset(holder for shares in self.by_right.values() for holder, _ in shares)

    @classmethod
    def from_record(cls, value: Mapping[str, Any]) -> WorkShares:
        by_right: dict[str, list[tuple[str, int]]] = {rt: [] for rt in RIGHT_TYPES}
        for share in value["shares"]:
            if share["share_ppm"] <= 0:
                raise InvalidReference(f"work {value['work_id']}: share of {share['rights_holder_id']} is not positive")
            by_right[share["right_type"]].append((share["rights_holder_id"], share["share_ppm"]))
        for rt, shares in by_right.items():
            total = sum(ppm for _, ppm in shares)
            if total != PPM:
                raise InvalidReference(f"work {value['work_id']}: {rt} shares sum to {total} ppm, not {PPM}")
        return cls(value["work_id"], {rt: tuple(shares) for rt, shares in by_right.items()})


def influences_from_record(value: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    """(work id, weight ppm) of a watermarked segment's provenance, checked to sum to 1,000,000."""
    influences = tuple((i["work_id"], i["weight_ppm"]) for i in value["provenance"]["influences"])
    total = sum(w for _, w in influences)
    if total != PPM or any(w <= 0 for _, w in influences):
        raise InvalidReference(f"segment {value['segment_id']}: influence weights sum to {total} ppm, not {PPM}")
    return influences


@dataclass(frozen=True, slots=True)
class Line:
    event_id: str
    rights_holder_id: str
    right_type: str
    amount_micros: int
    works: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Paid:
    rate: Rate
    lines: tuple[Line, ...]


@dataclass(frozen=True, slots=True)
class Unpaid:
    """Eligible for nothing; ``reason`` is a metric label and a log field."""

    reason: str


@dataclass(frozen=True, slots=True)
class Waiting:
    """An input the play needs has not been seen yet; try again later."""

    reason: str


Decision = Paid | Unpaid | Waiting


def event_id(play_id: str, rights_holder_id: str, right_type: str) -> str:
    digest = hashlib.sha256(f"{play_id}\x00{rights_holder_id}\x00{right_type}".encode()).hexdigest()
    return f"rev-{digest[:32]}"


def decide(
    play: Play,
    rates: RateCard,
    works: Mapping[str, WorkShares],
    segments: Mapping[str, SegmentFacts],
    consent: ConsentHistory,
    seen_before: bool,
) -> Decision:
    """What a play pays. Raises RateCardMissing when no rate prices it."""
    if seen_before:
        return Unpaid("duplicate_play")
    if play.fraud_flags:
        return Unpaid("fraud_flagged")
    if play.ms_played < MIN_PLAY_MS and not (play.content_kind == "AI_SEGMENT" and play.completed):
        return Unpaid("short_play")  # AI segments are a few seconds by design: heard to the end counts
    rate = rates.price(play.territory, play.subscription_tier, play.started_at)

    if play.content_kind == "AI_SEGMENT":
        segment = segments.get(play.segment_id or "")
        if segment is None:
            return Waiting("segment_provenance_unknown")
        if segment.listener_id != play.listener_id:
            return Unpaid("not_delivered_to_listener")
        if play.completed and play.ms_played < segment.duration_ms - HEARD_SLACK_MS:
            return Unpaid("not_heard")
        influences = segment.influences
        if any(work not in works for work, _ in influences):
            return Waiting("influencing_work_unknown")
        weights = {
            work: weight for work, weight in influences
            if consent.work_allowed("ai_generation", works[work].rights_holders, work, play.started_at)
        }
        if not weights:
            return Unpaid("no_consenting_influence")
    else:
        if play.work_id is None or play.work_id not in works:
            return Waiting("work_unknown")
        weights = {play.work_id: PPM}

    amounts: dict[tuple[str, str], dict[str, int]] = {}
    for right_type, amount in rate.per_play_micros:
        per_work = split_by_largest_remainder(amount, weights, seed=f"{play.play_id}/{right_type}")
        for work, work_amount in per_work.items():
            holders = dict(works[work].by_right[right_type])
            per_holder = split_by_largest_remainder(work_amount, holders, seed=f"{play.play_id}/{right_type}/{work}")
            for holder, part in per_holder.items():
                breakdown = amounts.setdefault((holder, right_type), {})
                breakdown[work] = breakdown.get(work, 0) + part
    lines = tuple(
        Line(event_id(play.play_id, holder, right_type), holder, right_type, sum(by_work.values()),
             tuple(sorted(by_work.items())))
        for (holder, right_type), by_work in sorted(amounts.items())
        if sum(by_work.values()) > 0  # a share that rounds to nothing is not a line
    )
    return Paid(rate, lines)


def line_record(play: Play, paid: Paid, line: Line, computed_at: int) -> dict[str, Any]:
    """The royalty.events.v1 value of a line."""
    return {
        "event_id": line.event_id, "play_id": play.play_id, "rights_holder_id": line.rights_holder_id,
        "right_type": line.right_type, "amount_micros": line.amount_micros, "currency": paid.rate.currency,
        "works": [{"work_id": w, "amount_micros": a} for w, a in line.works],
        "content_kind": play.content_kind, "segment_id": play.segment_id, "territory": play.territory,
        "subscription_tier": play.subscription_tier, "play_started_at": play.started_at,
        "rate_card_id": paid.rate.id, "computed_at": computed_at,
    }
