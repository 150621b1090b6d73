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


class PlayHistory:
    def __init__(self) -> None:
        self._plays: dict[str, int] = {}  # play id -> partition
        self._paid: dict[int, dict[str, Intervals]] = {}  # partition -> listener -> paid time
        self._undo_plays: list[str] = []
        self._undo_paid: dict[tuple[int, str], Intervals | None] = {}

    def __len__(self) -> int:
        return len(self._plays)

    def seen(self, play_id: str) -> bool:
        return play_id in self._plays

    def unpaid_ms(self, listener: str, start: int, end: int) -> int:
        """How much of [start, end) is not yet paid time of this listener."""
        for listeners in self._paid.values():
            if listener in listeners:
                return listeners[listener].uncovered_ms(start, end)
        return max(0, end - start)

    def decided(self, play_id: str, partition: int) -> None:
        """The play has its (PAID or UNPAID) ledger entry: a replay of its id pays nothing."""
        if play_id not in self._plays:
            self._plays[play_id] = partition
            self._undo_plays.append(play_id)

    def paid(self, listener: str, start: int, end: int, partition: int) -> None:
        """[start, end) is now paid time of the listener."""
        listeners = self._paid.setdefault(partition, {})
        key = (partition, listener)
        if key not in self._undo_paid:
            before = listeners.get(listener)
            self._undo_paid[key] = before.copy() if before else None
        listeners.setdefault(listener, Intervals()).add(start, end)

    def commit(self) -> None:
        """The batch's transaction committed: what was added stays."""
        self._undo_plays.clear()
        self._undo_paid.clear()

    def rollback(self) -> None:
        """The batch's transaction aborted: forget what it added."""
        for play_id in self._undo_plays:
            self._plays.pop(play_id, None)
        for (partition, listener), before in self._undo_paid.items():
            listeners = self._paid.get(partition, {})
            if before is None:
                listeners.pop(listener, None)
            else:
                listeners[listener] = before
        self.commit()

    def drop_partitions(self, partitions: set[int]) -> None:
        self._plays = {play: p for play, p in self._plays.items() if p not in partitions}
        for p in partitions:
            self._paid.pop(p, None)
        self.commit()

    def forget(self, listener: str) -> None:
        """An erasure: the listener's paid time goes (their segments go with it, so nothing of
        theirs from before can be paid again; later segments cannot be played before they exist)."""
        for listeners in self._paid.values():
            listeners.pop(listener, None)

    def drop_paid_before(self, cutoff: int) -> None:
        """Forget paid time that ended before ``cutoff`` (no play that old is accepted any more)."""
        for listeners in self._paid.values():
            for intervals in listeners.values():
                intervals.drop_before(cutoff)
            for listener in [x for x, intervals in listeners.items() if not intervals.starts]:
                del listeners[listener]
