"""What royalty has decided, for the play partitions it owns: which play ids are decided, and
each listener's paid listening time. Pure (no Kafka); the service rebuilds it from the play
ledger on assignment and rolls a batch back when its transaction aborts.

Paid time is kept per listener as sorted, disjoint intervals [start, end) of epoch
milliseconds. A play of an AI segment claims [started_at, started_at + heard) and is paid only
for the part no earlier paid play covers, so posting the same minutes twice (another play id,
another segment, played "in parallel") pays them once. Intervals closer than ``MERGE_GAP_MS``
are merged (a player's gap between two segments), which keeps a listening session one
interval; a later play inside such a gap loses at most that gap. Listeners' plays are keyed
(and so partitioned) by listener, so one partition owner holds a listener's whole history.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

MERGE_GAP_MS = 250


@dataclass
class Intervals:
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    def uncovered_ms(self, start: int, end: int) -> int:
        """Milliseconds of [start, end) that no interval covers."""
        if end <= start:
            return 0
        covered = 0
        i = bisect.bisect_right(self.ends, start)  # first interval that ends after start
        while i < len(self.starts) and self.starts[i] < end:
            covered += min(end, self.ends[i]) - max(start, self.starts[i])
            i += 1
        return end - start - covered

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        lo = bisect.bisect_left(self.ends, start - MERGE_GAP_MS)  # first that ends within the gap of start
        hi = bisect.bisect_right(self.starts, end + MERGE_GAP_MS)  # past the last that starts near end
        if lo < hi:
            start, end = min(start, self.starts[lo]), max(end, self.ends[hi - 1])
        self.starts[lo:hi], self.ends[lo:hi] = [start], [end]

    def drop_before(self, cutoff: int) -> None:
        keep = bisect.bisect_right(self.ends, cutoff)
        del self.starts[:keep], self.ends[:keep]

    def copy(self) -> Intervals:
        return Intervals(list(self.starts), list(self.ends))


@dataclass
class PartitionHistory:
    """What the ledger of one play partition says: the decided play ids and each listener's paid time."""

    plays: set[str] = field(default_factory=set)
    paid: dict[str, Intervals] = field(default_factory=dict)

    def decided(self, play_id: str) -> None:
        self.plays.add(play_id)

    def paid_time(self, listener: str, start: int, end: int) -> None:
        self.paid.setdefault(listener, Intervals()).add(start, end)


class PlayHistory:
    """The decided plays and paid time of the partitions this instance owns, with an undo log for
    the open batch. A partition's history is built apart (``PartitionHistory``, by the ledger
    loader, off the poll loop) and installed whole."""

    def __init__(self) -> None:
        self._parts: dict[int, PartitionHistory] = {}
        self._undo_plays: list[tuple[int, str]] = []
        self._undo_paid: dict[tuple[int, str], Intervals | None] = {}

    def __len__(self) -> int:
        return sum(len(part.plays) for part in self._parts.values())

    def seen(self, play_id: str) -> bool:
        return any(play_id in part.plays for part in self._parts.values())

    def unpaid_ms(self, listener: str, start: int, end: int) -> int:
        """How much of [start, end) is not yet paid time of this listener."""
        for part in self._parts.values():
            if listener in part.paid:
                return part.paid[listener].uncovered_ms(start, end)
        return max(0, end - start)

    def install(self, partition: int, part: PartitionHistory) -> None:
        """A partition's history as its ledger says (replacing whatever was held for it)."""
        self._parts[partition] = part

    def decided(self, play_id: str, partition: int) -> None:
        """The play has its (PAID or UNPAID) ledger entry: a replay of its id pays nothing."""
        part = self._parts.setdefault(partition, PartitionHistory())
        if play_id not in part.plays:
            part.plays.add(play_id)
            self._undo_plays.append((partition, play_id))

    def paid(self, listener: str, start: int, end: int, partition: int) -> None:
        """[start, end) is now paid time of the listener."""
        part = self._parts.setdefault(partition, PartitionHistory())
        key = (partition, listener)
        if key not in self._undo_paid:
            before = part.paid.get(listener)
            self._undo_paid[key] = before.copy() if before else None
        part.paid_time(listener, start, end)

    def commit(self) -> None:
        """The batch's transaction committed: what was added stays."""
        self._undo_plays.clear()
        self._undo_paid.clear()

    def rollback(self) -> None:
        """The batch's transaction aborted: forget what it added."""
        for partition, play_id in self._undo_plays:
            if partition in self._parts:
                self._parts[partition].plays.discard(play_id)
        for (partition, listener), before in self._undo_paid.items():
            paid = self._parts[partition].paid if partition in self._parts else {}
            if before is None:
                paid.pop(listener, None)
            else:
                paid[listener] = before
        self.commit()

    def drop_partitions(self, partitions: set[int]) -> None:
        for p in partitions:
            self._parts.pop(p, None)
        self.commit()

    def forget(self, listener: str) -> None:
        """An erasure: the listener's paid time goes (their segments go with it, so nothing of
        theirs from before can be paid again; later segments cannot be played before they exist)."""
        for part in self._parts.values():
            part.paid.pop(listener, None)

    def drop_paid_before(self, cutoff: int) -> None:
        """Forget paid time that ended before ``cutoff`` (no play that old is accepted any more)."""
        for part in self._parts.values():
            for intervals in part.paid.values():
                intervals.drop_before(cutoff)
            for listener in [x for x, intervals in part.paid.items() if not intervals.starts]:
                del part.paid[listener]
