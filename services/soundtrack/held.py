"""The listener states a worker holds: in memory, mirrored to the Faust table and its changelog.

Why not the table alone: every ``table[key] = value`` sends a changelog record, and reading
a state back means rebuilding it from a dict. Here a state stays a ``ListenerState`` between
events, and its changelog record is written at most once per commit interval: ``flush``
runs when the consumer is about to commit (a Faust sensor), and Faust flushes its producer
before it commits the offsets. So the changelog always holds every change up to the committed
offsets, and a crash loses only changes of events that were not committed yet, which are
consumed again and re-emit the same requests (request ids are deterministic).

A due-time heap replaces scanning every listener: ``due(now)`` returns only the listeners
whose next request (or eviction) is due, so the timer costs what is due, not what is held.
The timer emits those requests itself: no tick goes through Kafka.

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
    """The changelog value (JSON): the state, its partition and its next request's time."""
    return {**held.state.to_dict(), "partition": held.partition, "due_at": next_due_ms(held.state)}


class Listeners:
    def __init__(self, table: Any, evict_after_ms: int) -> None:
        self.table = table
        self.evict_after_ms = evict_after_ms
        self._held: dict[str, Held] = {}
        self._dirty: set[str] = set()
        self._heap: list[tuple[int, str]] = []
        self._seeded = False  # the heap knows every state in the table (redone after a rebalance)

    def get(self, key: str) -> Held | None:
        held = self._held.get(key)
        if held is None:
            data = self.table.data.get(key)
            if data:
                held = self._hold(key, ListenerState.from_dict(data), int(data["partition"]))
        return held

    def put(self, key: str, state: ListenerState, partition: int, not_before_ms: int = 0) -> None:
        self._hold(key, state, partition, not_before_ms)
        self._dirty.add(key)

    def _hold(self, key: str, state: ListenerState, partition: int, not_before_ms: int = 0) -> Held:
        due = next_due_ms(state) if state.session_id else NEVER_MS
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
            if held is not None:
                value = stored(held)
                self.table.data[key] = value
                self.table.send_changelog(held.partition, key, value)
                written += 1
        self._dirty.clear()
        return written

    def due(self, now_ms: int) -> list[str]:
        """Listeners whose wake time has come (each once; ``put`` sets the next one)."""
        if not self._seeded:
            for key in list(self.table.data.keys()):
                if key not in self._held:
                    self.get(key)
            self._seeded = True
        found: list[str] = []
        while self._heap and self._heap[0][0] <= now_ms:
            wake, key = heapq.heappop(self._heap)
            held = self._held.get(key)
            if held is not None and held.wake_ms == wake:  # else: superseded by a later put
                held.wake_ms = NEVER_MS
                found.append(key)
        if len(self._heap) > 4 * len(self._held) + 1024:  # superseded entries pile up: rebuild
            self._heap = [(h.wake_ms, k) for k, h in self._held.items() if h.wake_ms < NEVER_MS]
            heapq.heapify(self._heap)
        return found

    def rewake(self, key: str, not_before_ms: int) -> None:
        """Look at a listener again at its next wake time, not before ``not_before_ms``
        (its state did not change)."""
        held = self._held.get(key)
        if held is not None:
            self._hold(key, held.state, held.partition, not_before_ms)

    def forget_local(self) -> None:
        """A rebalance took partitions away: drop what memory holds (the table is the truth
        after recovery). Call after ``flush``."""
        self._held.clear()
        self._dirty.clear()
        self._heap.clear()
        self._seeded = False

    def active(self, now_ms: int) -> int:
        return sum(1 for h in self._held.values() if now_ms - h.state.last_seen_ms <= IDLE_MS)
