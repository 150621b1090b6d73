"""The royalty rules: a play in, royalty lines (or a reason for none) out. Pure.

A play is priced by the rate card entry for its territory, tier and start time, and by the
tariff for its usage (``royalty.rates``): a catalog play pays the per-play amount A_rt per
right type rt; an AI-segment play pays the per-minute amount times its **paid time**:

    heard = min(ms_played, segment duration)
    paid  = the part of [started_at, started_at + heard) that no earlier paid play of the
            same listener covers (``royalty.history``: a listener's paid time never overlaps)

* **AI segment** — the amount is split across the segment's influencing works by their
  influence weights, after removing every work with a rights holder who had not
  granted AI-generation consent at play time (``kit.consent``: opt-in, no record
  means no consent); the remaining weights are renormalised by the split itself.
* **Catalog work** — the whole amount goes to the work.
* Each work's part is split across the work's rights holders for rt by their shares (ppm).

Every rounding (per-minute amount, work split, holder split) is the unbiased systematic
rounding of ``royalty.money``, each seeded separately from the play's position on its topic
(which the broker assigns, so a client cannot grind play ids for favourable rounding): every
play's lines sum exactly to its amount, each payee is within one micro-unit of its exact share, and over many plays each
payee's mean is its exact share, however small. Lines are aggregated per (rights holder,
right type) with a per-work breakdown, and carry a deterministic event id.

Ineligible plays pay nothing (the reason is a metric label and a ledger field): a play id
decided before (``duplicate_play``), fraud-flagged, a catalog play under 30 s
(``short_play``), an AI segment not delivered to that listener
(``not_delivered_to_listener``), with nothing heard or claimed ``completed`` with
``ms_played`` short of the segment by more than ``HEARD_SLACK_MS`` (``not_heard``), claimed
to start before the segment was generated (``played_before_generated``, with ``CLOCK_SLACK_MS``
for device clocks) or more than ``PLAY_WINDOW_MS`` after (``played_after_window``), whose time
was already paid (``overlaps_paid_time``), of a listener erased since (``listener_erased``), or with
no consenting influence left. With
non-overlap, a listener's paid AI time is then bounded by the union of the day after each
segment they were really sent: it cannot be backfilled or spread from one segment over weeks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kit.consent import ConsentHistory
from royalty.history import PlayHistory
from royalty.money import split
from royalty.rates import RIGHT_TYPES, Rate, RateCard

MIN_PLAY_MS = 30_000
HEARD_SLACK_MS = 250  # a player's clock and the segment's rounding: "to the end" within a quarter second
CLOCK_SLACK_MS = 300_000  # a device clock this far behind the servers' still has its plays paid
PLAY_WINDOW_MS = 86_400_000  # a segment is generated for one listening session: paid if played within a day
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
    requested_at: int = 0  # what an erasure is compared with: a request before it is covered, rendered when it may

    @classmethod
    def from_record(cls, value: Mapping[str, Any]) -> SegmentFacts:
        generated = int(value["generated_at"])
        return cls(value["listener_id"], int(value["audio"]["duration_ms"]), influences_from_record(value),
                   generated, int(value.get("requested_at") or generated))


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
    heard_ms: int = 0  # AI segments: the time heard and the part of it paid (time-priced)
    paid_ms: int = 0

    @property
    def total_micros(self) -> int:
        return sum(line.amount_micros for line in self.lines)


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
    history: PlayHistory,
    position: str,
    erased: Callable[[str, int], bool] = lambda listener, at_ms: False,
) -> Decision:
    """What a play pays, given what was decided before it. ``position`` ("partition:offset" of the play
    on listener.plays.v1, which the broker assigns) seeds every rounding: a client cannot choose it, so
    it cannot pick play ids that round in its favour. Raises RateCardMissing when no rate prices it."""
    if history.seen(play.play_id):
        return Unpaid("duplicate_play")
    if play.fraud_flags:
        return Unpaid("fraud_flagged")
    rate = rates.price(play.territory, play.subscription_tier, play.started_at)
    heard_ms = paid_ms = 0
    if play.content_kind == "AI_SEGMENT":
        if erased(play.listener_id, play.started_at):  # its segments and paid time went with the erasure
            return Unpaid("listener_erased")
        segment = segments.get(play.segment_id or "")
        if segment is None:
            return Waiting("segment_provenance_unknown")
        if segment.listener_id != play.listener_id:
            return Unpaid("not_delivered_to_listener")
        if play.started_at < segment.generated_at - CLOCK_SLACK_MS:  # no backfilling paid time before it existed
            return Unpaid("played_before_generated")
        if play.started_at > segment.generated_at + PLAY_WINDOW_MS:  # nor spreading one segment over weeks
            return Unpaid("played_after_window")
        heard_ms = min(play.ms_played, segment.duration_ms)
        if heard_ms <= 0 or (play.completed and play.ms_played < segment.duration_ms - HEARD_SLACK_MS):
            return Unpaid("not_heard")
        paid_ms = history.unpaid_ms(play.listener_id, play.started_at, play.started_at + heard_ms)
        if paid_ms <= 0:
            return Unpaid("overlaps_paid_time")
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
        if play.ms_played < MIN_PLAY_MS:
            return Unpaid("short_play")
        if play.work_id is None or play.work_id not in works:
            return Waiting("work_unknown")
        weights = {play.work_id: PPM}

    amounts: dict[tuple[str, str], dict[str, int]] = {}
    for right_type, amount in rate.amounts(play.content_kind, paid_ms, seed=position):
        per_work = split(amount, weights, seed=f"{position}/works/{right_type}")
        for work, work_amount in per_work.items():
            holders = dict(works[work].by_right[right_type])
            per_holder = split(work_amount, holders, seed=f"{position}/holders/{right_type}/{work}")
            for holder, part in per_holder.items():
                breakdown = amounts.setdefault((holder, right_type), {})
                breakdown[work] = breakdown.get(work, 0) + part
    lines = tuple(
        Line(event_id(play.play_id, holder, right_type), holder, right_type, sum(by_work.values()),
             tuple((w, a) for w, a in sorted(by_work.items()) if a > 0))
        for (holder, right_type), by_work in sorted(amounts.items())
        if sum(by_work.values()) > 0  # a share that rounds to nothing is not a line
    )
    return Paid(rate, lines, heard_ms, paid_ms)


def position(partition: int, offset: int) -> str:
    """The rounding seed of the play at (partition, offset) of listener.plays.v1 (the ledger keeps both)."""
    return f"{partition}:{offset}"


def remember(history: PlayHistory, play: Play, decision: Decision, partition: int) -> None:
    """Fold a decided play into the history (what its ledger entry says, once committed)."""
    if isinstance(decision, Waiting) or decision == Unpaid("duplicate_play"):
        return
    history.decided(play.play_id, partition)
    if isinstance(decision, Paid) and decision.heard_ms:
        history.paid(play.listener_id, play.started_at, play.started_at + decision.heard_ms, partition)


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
