"""The one consent rule every service applies: opt-in, default deny.

A rights holder's consent is a history of ``catalog.consent.v1`` records per scope
(the whole catalog, or one work), each naming what it allows — ``ai_training``,
``ai_generation``, ``likeness`` — from ``effective_from`` on. At a given time:

* the record in effect for a scope is the last one whose ``effective_from`` has come,
  records with the same ``effective_from`` ordered by ``updated_at`` and then by their
  position on the topic (both monotonic for one scope: one scope is one key, one
  partition), so a later change to a scheduled grant — its cancellation — wins;
* a per-work record overrides the catalog-wide one;
* no record at all means **no** consent, for every purpose;
* a tombstone (a deleted scope) is a record that allows nothing, from its timestamp on.

Pure: training (``make train``), inference, royalty and the tests all use this class.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PURPOSES = ("ai_training", "ai_generation", "likeness")
Scope = tuple[str, str | None]  # (rights holder, work id or None for the whole catalog)


@dataclass(frozen=True, order=True, slots=True)
class _Entry:
    effective_from: int
    updated_at: int
    position: int
    allowed: frozenset[str] = field(compare=False)


@dataclass
class ConsentHistory:
    """Every consent record seen, per scope, in the order the rule above defines."""

    _records: dict[Scope, list[_Entry]] = field(default_factory=dict)
    _added: int = 0

    def add(self, rights_holder_id: str, work_id: str | None, effective_from: int, flags: Mapping[str, bool],
            updated_at: int = 0, position: int | None = None) -> None:
        """One record; ``position`` is its place on the topic (default: the order of ``add`` calls)."""
        unknown = set(flags) - set(PURPOSES)
        if unknown:
            raise ValueError(f"unknown consent purposes {sorted(unknown)}")
        self._added += 1
        entry = _Entry(effective_from, updated_at, self._added if position is None else position,
                       frozenset(p for p, granted in flags.items() if granted))
        insort(self._records.setdefault((rights_holder_id, work_id), []), entry)

    def add_record(self, value: Mapping[str, Any], position: int | None = None) -> None:
        """A decoded catalog.consent.v1 value."""
        work_id = None if value["work_id"] is None else str(value["work_id"])
        self.add(str(value["rights_holder_id"]), work_id, int(value["effective_from"]),
                 {p: bool(value[p]) for p in PURPOSES}, int(value.get("updated_at") or 0), position)

    def withdraw(self, rights_holder_id: str, work_id: str | None, at_ms: int, position: int | None = None) -> None:
        """A tombstone: from ``at_ms`` on, this scope allows nothing."""
        self.add(rights_holder_id, work_id, at_ms, {}, updated_at=at_ms, position=position)

    def _in_effect(self, scope: Scope, at_ms: int) -> frozenset[str] | None:
        current = None
        for entry in self._records.get(scope, ()):
            if entry.effective_from > at_ms:
                break
            current = entry.allowed
        return current

    def allowed(self, purpose: str, rights_holder_id: str, work_id: str, at_ms: int) -> bool:
        """Does this holder allow ``purpose`` for this work at ``at_ms``? No record: no."""
        if purpose not in PURPOSES:
            raise ValueError(f"unknown consent purpose {purpose!r}")
        per_work = self._in_effect((rights_holder_id, work_id), at_ms)
        if per_work is not None:
            return purpose in per_work
        catalog = self._in_effect((rights_holder_id, None), at_ms)
        return catalog is not None and purpose in catalog

    def refused(self, purpose: str, rights_holder_id: str, work_id: str, at_ms: int) -> bool:
        """A record in effect says no (a withdrawal), as opposed to there being no record at all."""
        per_work = self._in_effect((rights_holder_id, work_id), at_ms)
        if per_work is not None:
            return purpose not in per_work
        catalog = self._in_effect((rights_holder_id, None), at_ms)
        return catalog is not None and purpose not in catalog

    def work_allowed(self, purpose: str, rights_holders: frozenset[str] | set[str], work_id: str, at_ms: int) -> bool:
        """Every rights holder of the work allows it (a work with no holder is never allowed)."""
        return bool(rights_holders) and all(self.allowed(purpose, h, work_id, at_ms) for h in rights_holders)

    def generation_allowed(self, rights_holder_id: str, work_id: str, at_ms: int) -> bool:
        return self.allowed("ai_generation", rights_holder_id, work_id, at_ms)
