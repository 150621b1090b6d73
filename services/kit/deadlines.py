"""Records held across polls and served earliest deadline first, with the offsets that may be committed.

A service whose work has deadlines (inference: a request's segment must exist by then; watermark:
a generated segment must reach the playlist by then) should not serve it in arrival order: under
a burst, a new session's first segment would wait behind seconds of look-ahead for everyone
else. ``DeadlineQueue`` holds decoded records and hands out the earliest deadline first.

* **Late work last.** A record whose deadline (plus ``grace_ms``: watermark's segments still
  play if they arrive within the player's margin) has passed by the time it would be served
  moves to a late queue (arrival order) that is served while no on-time record is held, so work
  that is already late cannot make on-time work late too (EDF's domino effect under overload);
  one that has waited there ``late_max_wait_ms`` is served anyway (one a second at most, so a
  backlog of late work cannot starve on-time work), so it cannot pin the partition's commits for
  ever.
* **Superseded work is skipped.** With ``version_of`` a record names its position and version
  (inference: a listener's session and sequence; the version its request time): a newer version
  of a held position takes the older one's place, and the older one is done without being
  served; so is a second copy of the version held (a replay of the same record).
* **A replacement yields to first versions.** A new version of a position already served is a
  replacement (the scheduler replanned it): if it is late, the version served before still
  plays, while a first version that is late leaves a gap. So a replacement is ordered as if its
  deadline were ``replacement_delay_ms`` later (its lateness is still judged by its own deadline).
* **Out-of-order completion, in-order commits.** ``committable`` gives, per partition, the lowest
  offset still held (or one past the highest taken): everything below it is done, so a commit
  there never skips a record that was not served; a crash replays the held ones (handlers are
  idempotent, as for every consumer here).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
SERVED_REMEMBERED = 100_000  # positions whose next version counts as a replacement
AGED_EVERY_MS = 1_000  # late work that waited late_max_wait_ms is served at this rate at most
Partition = tuple[str, int]


@dataclass(eq=False)
class Held(Generic[T]):
    topic: str
    partition: int
    offset: int
    deadline_ms: int
    item: T
    position: Hashable | None = None
    version: Any = None
    cancelled: bool = False
    late_since_ms: int = 0


@dataclass
class DeadlineQueue(Generic[T]):
    deadline_of: Callable[[T], int]
    version_of: Callable[[T], tuple[Hashable, Any] | None] | None = None
    grace_ms: int = 0
    late_max_wait_ms: int = 5_000
    replacement_delay_ms: int = 0
    _served: OrderedDict[Hashable, None] = field(default_factory=OrderedDict)  # positions served (bounded)
    _heap: list[tuple[int, int, Held[T]]] = field(default_factory=list)
    _late: deque[Held[T]] = field(default_factory=deque)
    _newest: dict[Hashable, Held[T]] = field(default_factory=dict)
    _outstanding: dict[Partition, set[int]] = field(default_factory=dict)
    _next: dict[Partition, int] = field(default_factory=dict)
    _count: itertools.count[int] = field(default_factory=itertools.count)
    _held: int = 0
    _aged_at_ms: int = -1_000_000

    def __len__(self) -> int:
        return self._held

    def taken(self, topic: str, partition: int, offset: int) -> None:
        """A record was taken from the consumer (held or not: a record dead-lettered on decoding
        is done at once)."""
        key = (topic, partition)
        self._next[key] = max(self._next.get(key, 0), offset + 1)

    def push(self, topic: str, partition: int, offset: int, item: T) -> T | None:
        """Hold a record; returns the one it supersedes (done, not to be served), or None."""
        self.taken(topic, partition, offset)
        held = Held(topic, partition, offset, self.deadline_of(item), item)
        named = self.version_of(item) if self.version_of is not None else None
        if named is not None:
            held.position, held.version = named
            older = self._newest.get(held.position)
            if older is not None and held.version <= older.version:
                return item  # an older version than one held (out of order), or the same again: never served
            if older is not None and older.version < held.version:
                self._cancel(older)
                self._newest[held.position] = held
                self._add(held)
                return older.item
            self._newest[held.position] = held
        self._add(held)
        return None

    def take(self, n: int, now_ms: int) -> list[Held[T]]:
        """Up to ``n`` held records: on-time ones earliest deadline first, late ones (in arrival
        order) only when no on-time record is left. They stay outstanding until ``done``."""
        out: list[Held[T]] = []
        while self._late and self._late[0].cancelled:
            self._late.popleft()
        if self._late and now_ms - self._late[0].late_since_ms >= self.late_max_wait_ms \
                and now_ms - self._aged_at_ms >= AGED_EVERY_MS:
            # waited long enough: served whatever else is held, but one a second at most, so a
            # backlog of late work (after a broker restart) cannot starve the on-time work
            out.append(self._late.popleft())
            self._aged_at_ms = now_ms
        while self._heap and len(out) < n:
            _, _, held = heapq.heappop(self._heap)
            if held.cancelled:
                continue
            if held.deadline_ms + self.grace_ms <= now_ms:
                held.late_since_ms = now_ms
                self._late.append(held)
                continue
            out.append(held)
        while self._late and len(out) < n and not self._heap_has_work():
            held = self._late.popleft()
            if not held.cancelled:
                out.append(held)
        for held in out:
            self._held -= 1
            if held.position is not None:
                if self._newest.get(held.position) is held:
                    del self._newest[held.position]
                self._served[held.position] = None
                self._served.move_to_end(held.position)
                if len(self._served) > SERVED_REMEMBERED:
                    self._served.popitem(last=False)
        return out

    def done(self, held: Held[T]) -> None:
        self._outstanding[(held.topic, held.partition)].discard(held.offset)

    def committable(self) -> dict[Partition, int]:
        """Per partition, the offset a commit may name: the lowest held or in-service offset, or
        one past the highest taken."""
        return {key: min(self._outstanding[key]) if self._outstanding.get(key) else end
                for key, end in self._next.items()}

    def drop(self, partitions: Iterable[Partition]) -> None:
        """Forget the held records of partitions this consumer no longer owns (their new owner
        consumes them again from the committed offset)."""
        gone = set(partitions)
        for key in gone:
            self._outstanding.pop(key, None)
            self._next.pop(key, None)
        for held in [h for _, _, h in self._heap] + list(self._late):
            if (held.topic, held.partition) in gone and not held.cancelled:
                held.cancelled = True
                self._held -= 1
                if held.position is not None and self._newest.get(held.position) is held:
                    del self._newest[held.position]
        self._heap = [entry for entry in self._heap if not entry[2].cancelled]
        heapq.heapify(self._heap)
        self._late = deque(h for h in self._late if not h.cancelled)

    def _add(self, held: Held[T]) -> None:
        self._outstanding.setdefault((held.topic, held.partition), set()).add(held.offset)
        key = held.deadline_ms + (self.replacement_delay_ms if held.position in self._served else 0)
        heapq.heappush(self._heap, (key, next(self._count), held))
        self._held += 1

    def _cancel(self, held: Held[T]) -> None:
        held.cancelled = True
        self._held -= 1
        self.done(held)

    def _heap_has_work(self) -> bool:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return bool(self._heap)


# A soundtrack segment's deadline is this long before the player starts it (soundtrack.schedule's
# DEADLINE_MARGIN_MS; delivery's OpenAPI says so): one finished within it is late but still plays.
PLAYER_MARGIN_MS = 1_500
# A replanned segment is asked for >= 3.5 s before its start (2 s before its deadline); new positions
# are due 2.5-5 s ahead. Ordered 2 s later, a replacement goes before a first version only if that
# one's deadline is over 2 s later than its own.
REPLACEMENT_DELAY_MS = 2_000


def soundtrack_deadline(record: Any) -> int:
    """A soundtrack request's or segment's deadline (a tombstone is due at once: it is rejected)."""
    return int(record.value["deadline"]) if record.value is not None else 0


def soundtrack_position(record: Any) -> tuple[Hashable, Any] | None:
    """A request's or segment's position (listener, session, sequence) and version (when it was
    requested, then its request id): the scheduler's replacement of a position is requested later."""
    v = record.value
    if v is None:
        return None
    return (v["listener_id"], v["session_id"], v["sequence"]), (v["requested_at"], v["request_id"])
