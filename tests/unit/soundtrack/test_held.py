"""The worker's in-memory listener states: one changelog write per changed listener per commit,
a due-time heap instead of a scan, tombstones on drop, only owned partitions, and the table as
the truth after a rebalance. Against a stand-in for the Faust table's two calls; the real table
and changelog are in tests/integration/soundtrack."""

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


def owning(table: Table, *partitions: int, evict_after_ms: int = EVICT_MS) -> Listeners:
    held = Listeners(table, evict_after_ms)
    held.assign(set(partitions))
    return held


def woken(held: Listeners, now: int) -> list[str]:
    keys = []
    while (due := held.next_due(now)) is not None:
        keys.append(due[0])
    return keys


def run_timer(held: Listeners, start: int, end: int, step: int = 100) -> tuple[list[int], list[int]]:
    """The timer's loop, as app.schedule runs it: (wake times, times requests were made)."""
    wakes, requested = [], []
    for now in range(start, end, step):
        while (due := held.next_due(now)) is not None:
            key, known = due
            wakes.append(now)
            state, requests = due_requests(known.state, now)
            if requests:
                requested.append(now)
                held.put(key, state, known.partition, not_before_ms=now + 1)
            else:
                held.rewake(key, now + 100)
    return wakes, requested


def test_a_listener_changed_many_times_is_written_once_per_flush() -> None:
    table = Table()
    held = owning(table, 1, 3)
    for n in range(5):
        held.put("a", running("a", T0 + n), partition=3)
    held.put("b", running("b", T0), partition=1)
    assert table.changelog == [] and held.flush() == 2
    assert sorted((p, k) for p, k, _ in table.changelog) == [(1, "b"), (3, "a")]
    assert table.data["a"] == stored(held.get("a")) and table.data["a"]["partition"] == 3  # type: ignore[arg-type]
    assert held.flush() == 0  # nothing changed since


def test_only_listeners_that_are_due_wake_and_each_once() -> None:
    held = owning(Table(), 0)
    state = running("a", T0)
    held.put("a", state, 0)
    held.put("b", running("b", T0 + 60_000), 0)
    due_at = next_due_ms(state)
    assert woken(held, due_at - 1) == []
    assert woken(held, due_at) == ["a"] and woken(held, due_at) == []  # until something sets its next wake
    held.rewake("a", not_before_ms=due_at + 100)
    assert woken(held, due_at + 99) == [] and woken(held, due_at + 100) == ["a"]


def test_a_later_state_supersedes_the_earlier_wake_time() -> None:
    held = owning(Table(), 0)
    early = running("a", T0)
    held.put("a", early, 0)
    later = running("a", T0 + 30_000)
    held.put("a", later, 0)
    assert woken(held, next_due_ms(early)) == []
    assert woken(held, next_due_ms(later)) == ["a"]


def test_an_evicted_listener_s_drop_is_a_tombstone() -> None:
    table = Table()
    held = owning(table, 2, evict_after_ms=4_000)
    held.put("a", running("a", T0), 2)
    held.flush()
    assert woken(held, T0 + 4_001) == ["a"]  # no later than its eviction time
    assert held.drop("a") and "a" not in table.data and table.changelog[-1] == (2, "a", None)
    assert not held.drop("a")  # gone: no second tombstone


def test_a_silent_listener_gets_requests_for_a_minute_then_no_wake_until_its_eviction() -> None:
    for offset in (0, 37, 71):  # timer ticks that do not line up with the samples
        held = owning(Table(), 0)
        held.put("a", running("a", T0), 0)
        wakes, requested = run_timer(held, T0 + offset, T0 + 3 * IDLE_MS)
        assert requested and max(requested) <= T0 + IDLE_MS
        assert not [w for w in wakes if w > T0 + IDLE_MS + 100], offset  # the eviction wake is an hour away


def test_a_timer_late_past_the_silence_cut_off_does_not_keep_waking_the_listener() -> None:
    """Its request was due just before the cut-off; the timer came after it (a busy loop, a stall)."""
    held = owning(Table(), 0)
    state = running("a", T0)
    held.put("a", state, 0)
    late = T0 + IDLE_MS + 50
    assert next_due_ms(state) < late and woken(held, late) == ["a"]
    assert due_requests(state, late)[1] == []  # silent: no more requests
    held.rewake("a", late + 100)
    assert woken(held, late + 60_000) == []  # next: the eviction, an hour after the last sample
    assert woken(held, T0 + EVICT_MS + 1) == ["a"]


def test_states_of_partitions_this_worker_does_not_own_are_never_loaded_woken_or_written() -> None:
    table = Table()
    held = owning(table, 0)
    table.data["standby"] = stored(_held("standby", 5))  # a standby copy of another worker's partition
    assert held.get("standby") is None
    assert run_timer(held, T0, T0 + IDLE_MS) == ([], [])
    held.put("gone", running("gone", T0), 0)
    held.assign({1})  # partition 0 went elsewhere without this worker writing its change
    assert held.flush() == 0 and table.changelog == []


def test_after_a_rebalance_the_table_is_the_truth_and_every_owned_state_in_it_is_scheduled() -> None:
    table = Table()
    held = owning(table, 0)
    held.put("a", running("a", T0), 0)
    held.flush()
    generation = held.generation
    held.put("a", running("a", T0 + 30_000), 0)  # not written: its telemetry is consumed again
    held.forget_local()
    assert held.generation != generation  # a timer run that was awaiting stops
    held.assign({0, 4})
    table.data["c"] = stored(_held("c", 4))  # recovered: a partition this worker was just given
    assert held.get("a").state == ListenerState.from_dict(table.data["a"])  # type: ignore[union-attr]
    assert set(woken(held, T0 + IDLE_MS)) == {"a", "c"}


def _held(listener: str, partition: int) -> Any:
    other = owning(Table(), partition)
    other.put(listener, running(listener, T0), partition)
    return other.get(listener)
