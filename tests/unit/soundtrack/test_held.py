"""The worker's in-memory listener states: one changelog write per changed listener per commit,
a due-time heap instead of a scan, tombstones on drop, and the table as the truth after a
rebalance. Against a stand-in for the Faust table's two calls; the real table and changelog
are in tests/integration/soundtrack."""

from __future__ import annotations

from typing import Any

from soundtrack.held import Listeners, stored
from soundtrack.schedule import IDLE_MS, ListenerState, due_requests, next_due_ms, observe

T0 = 1_800_000_000_000
EVICT_MS = 3_600_000


class Table:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.changelog: list[tuple[int | None, str, Any]] = []

    def send_changelog(self, partition: int | None, key: str, value: Any, **_: Any) -> None:
        self.changelog.append((partition, key, value))


def running(listener: str, at: int) -> ListenerState:
    sample = {"session_id": "s", "event_time": at, "heart_rate_bpm": 150, "cadence_spm": 168, "activity": "RUNNING",
              "session_mode": "MATCH", "guide_target": "NONE"}
    state, _ = due_requests(observe(ListenerState(listener), sample, at), at)
    return state


def test_a_listener_changed_many_times_is_written_once_per_flush() -> None:
    table = Table()
    held = Listeners(table, EVICT_MS)
    for n in range(5):
        held.put("a", running("a", T0 + n), partition=3)
    held.put("b", running("b", T0), partition=1)
    assert table.changelog == [] and held.flush() == 2
    assert sorted((p, k) for p, k, _ in table.changelog) == [(1, "b"), (3, "a")]
    assert table.data["a"] == stored(held.get("a")) and table.data["a"]["partition"] == 3  # type: ignore[arg-type]
    assert held.flush() == 0  # nothing changed since


def test_only_listeners_that_are_due_wake_and_each_once() -> None:
    held = Listeners(Table(), EVICT_MS)
    state = running("a", T0)
    held.put("a", state, 0)
    held.put("b", running("b", T0 + 60_000), 0)
    due_at = next_due_ms(state)
    assert held.due(due_at - 1) == []
    assert held.due(due_at) == ["a"] and held.due(due_at) == []  # until something sets its next wake
    held.rewake("a", not_before_ms=due_at + 100)
    assert held.due(due_at + 99) == [] and held.due(due_at + 100) == ["a"]


def test_a_later_state_supersedes_the_earlier_wake_time() -> None:
    held = Listeners(Table(), EVICT_MS)
    early = running("a", T0)
    held.put("a", early, 0)
    later = running("a", T0 + 30_000)
    held.put("a", later, 0)
    assert held.due(next_due_ms(early)) == []
    assert held.due(next_due_ms(later)) == ["a"]


def test_a_silent_listener_wakes_next_to_be_evicted_and_its_drop_is_a_tombstone() -> None:
    table = Table()
    held = Listeners(table, evict_after_ms=4_000)
    state = running("a", T0)
    held.put("a", state, 2)
    held.flush()
    assert held.due(T0 + 4_001) == ["a"]  # no later than its eviction time
    assert held.drop("a") and "a" not in table.data and table.changelog[-1] == (2, "a", None)
    assert not held.drop("a")  # gone: no second tombstone


def test_a_silent_listener_gets_requests_for_a_minute_then_no_wake_until_its_eviction() -> None:
    """The timer's loop, as app.schedule runs it: no busy waking once requests have stopped."""
    held = Listeners(Table(), EVICT_MS)
    held.put("a", running("a", T0), 0)
    wakes, requested = [], []
    for now in range(T0, T0 + 3 * IDLE_MS, 100):
        for key in held.due(now):
            wakes.append(now)
            known = held.get(key)
            assert known is not None
            state, requests = due_requests(known.state, now)
            if requests:
                requested.append(now)
                held.put(key, state, known.partition, not_before_ms=now + 1)
            else:
                held.rewake(key, now + 100)
    assert requested and max(requested) <= T0 + IDLE_MS
    assert not [w for w in wakes if w > T0 + IDLE_MS]  # the eviction wake is an hour after the last sample


def test_after_a_rebalance_the_table_is_the_truth_and_every_state_in_it_is_scheduled() -> None:
    table = Table()
    held = Listeners(table, EVICT_MS)
    held.put("a", running("a", T0), 0)
    held.flush()
    held.put("a", running("a", T0 + 30_000), 0)  # not written: its telemetry is consumed again
    held.forget_local()
    table.data["c"] = stored(_held("c", 4))  # recovered: a partition this worker was just given
    assert held.get("a").state == ListenerState.from_dict(table.data["a"])  # type: ignore[union-attr]
    assert set(held.due(T0 + IDLE_MS)) == {"a", "c"}


def _held(listener: str, partition: int) -> Any:
    other = Listeners(Table(), EVICT_MS)
    other.put(listener, running(listener, T0), partition)
    return other.get(listener)
