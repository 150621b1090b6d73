"""The listener states a worker holds: in memory, mirrored to the Faust table and its changelog.

Why not the table alone: every ``table[key] = value`` sends a changelog record, and reading
a state back means rebuilding it from a dict. Here a state stays a ``ListenerState`` between
events, and its changelog record is written at most once per commit interval: ``flush``
runs when the consumer starts a commit (a Faust sensor, before the acked offsets are taken),
and Faust flushes its producer before it commits them. So the changelog gets every change of
the events whose offsets are committed, as far as Faust's own producer flush goes (the same
guarantee a plain Faust table has). A crash loses only changes of events not committed yet;
they are consumed again and make requests with the same ids (deterministic).

Only listeners on partitions this worker owns are loaded, woken or written: the table's
memory store also holds standby copies of other workers' partitions, and keys of partitions
it was given and lost again.

A due-time heap replaces scanning every listener: ``next_due(now)`` hands out, one at a time,
only the listeners whose next request (or eviction) is due, so the timer costs what is due,
not what is held. The timer emits those requests itself: no tick goes through Kafka.

``table`` is the Faust table (adapter at the edge): its ``data`` store (what recovery fills) and
``send_changelog(partition, key, value)``.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

from soundtrack.schedule import IDLE_MS, NEVER_MS, ListenerState, next_due_ms


@dataclass
class Held:
    state: ListenerState
    partition: int  # the telemetry partition: the changelog record goes there (co-partitioned)
    wake_ms: int  # when the timer looks at this listener next: a request or the eviction is due


def stored(held: Held) -> dict[str, Any]:
    """The changelog value (JSON): the state, its partition and its next request's time
    (``due_at``: what workers before the heap compared; the state alone gives it)."""
    return {**held.state.to_dict(), "partition": held.partition, "due_at": next_due_ms(held.state)}


class Listeners:
    def __init__(self, table: Any, evict_after_ms: int) -> None:
        self.table = table
        self.evict_after_ms = evict_after_ms
        self.owned: frozenset[int] = frozenset()  # telemetry partitions assigned to this worker
        self.generation = 0  # moves on at every revocation: a timer run that awaited stops
        self._held: dict[str, Held] = {}
        self._dirty: set[str] = set()
        self._heap: list[tuple[int, str]] = []
        self._seeded = False  # the heap knows every owned state in the table (redone after a rebalance)

    def assign(self, partitions: set[int]) -> None:
        """The rebalance is over: these telemetry partitions are this worker's now."""
        self.owned = frozenset(partitions)
        self._seeded = False

    def get(self, key: str) -> Held | None:
        held = self._held.get(key)
        if held is None:
            data = self.table.data.get(key)
            if data and int(data["partition"]) in self.owned:
                held = self._hold(key, ListenerState.from_dict(data), int(data["partition"]))
        return held

    def put(self, key: str, state: ListenerState, partition: int, not_before_ms: int = 0) -> None:
        self._hold(key, state, partition, not_before_ms)
        self._dirty.add(key)

    def _hold(self, key: str, state: ListenerState, partition: int, not_before_ms: int = 0) -> Held:
        due = max(next_due_ms(state) if state.session_id else NEVER_MS, not_before_ms)
        if due > state.last_seen_ms + IDLE_MS:  # silent by then: no more requests (due_requests agrees)
            due = NEVER_MS
        wake = max(min(due, state.last_seen_ms + self.evict_after_ms + 1), not_before_ms)
        held = self._held[key] = Held(state, partition, wake)
        heapq.heappush(self._heap, (wake, key))
        return held

    def drop(self, key: str) -> bool:
        """Forget a listener: the state goes, with a tombstone on the changelog. True if it was held."""
        held = self.get(key)
        self._held.pop(key, None)
        self._dirty.discard(key)
        if held is None:
            return False
        self.table.data.pop(key, None)
        self.table.send_changelog(held.partition, key, None, value_serializer="raw")
        return True

    def flush(self) -> int:
        """Write each changed state once to the table and its changelog; how many were written."""
        written = 0
        for key in self._dirty:
            held = self._held.get(key)
            if held is not None and held.partition in self.owned:
                value = stored(held)
                self.table.data[key] = value
                self.table.send_changelog(held.partition, key, value)
                written += 1
        self._dirty.clear()
        return written

    def next_due(self, now_ms: int) -> tuple[str, Held] | None:
        """One listener whose wake time has come, or None. It is not woken again until ``put``
        or ``rewake`` sets its next wake time."""
        if not self._seeded:
            for key in list(self.table.data.keys()):
                if key not in self._held:
                    self.get(key)
            self._seeded = True
        while self._heap and self._heap[0][0] <= now_ms:
            wake, key = heapq.heappop(self._heap)
            held = self._held.get(key)
            if held is not None and held.wake_ms == wake:  # else: superseded by a later put
                held.wake_ms = NEVER_MS
                return key, held
        if len(self._heap) > 4 * len(self._held) + 1024:  # superseded entries pile up: rebuild
            self._heap = [(h.wake_ms, k) for k, h in self._held.items() if h.wake_ms < NEVER_MS]
            heapq.heapify(self._heap)
        return None

    def rewake(self, key: str, not_before_ms: int) -> None:
        """Look at a listener again at its next wake time, not before ``not_before_ms``
        (its state did not change)."""
        held = self._held.get(key)
        if held is not None:
            self._hold(key, held.state, held.partition, not_before_ms)

    def forget_local(self) -> None:
        """Partitions are being revoked: drop what memory holds (the table, recovered from the
        changelog, is the truth afterwards). Changes not written yet belong to telemetry whose
        offsets are not committed, which is consumed again."""
        self._held.clear()
        self._dirty.clear()
        self._heap.clear()
        self.owned = frozenset()
        self._seeded = False
        self.generation += 1

    def active(self, now_ms: int) -> int:
        return sum(1 for h in self._held.values() if now_ms - h.state.last_seen_ms <= IDLE_MS)
