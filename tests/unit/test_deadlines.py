"""kit.deadlines: earliest deadline first, late work last, superseded versions skipped, and
commits only below the lowest offset not yet done."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kit.deadlines import DeadlineQueue


@dataclass(frozen=True)
class Item:
    deadline: int
    position: str | None = None
    version: int = 0


def queue() -> DeadlineQueue[Item]:
    return DeadlineQueue(lambda i: i.deadline,
                         lambda i: None if i.position is None else (i.position, i.version))


def served(q: DeadlineQueue[Any], n: int, now: int = 0) -> list[int]:
    out = q.take(n, now)
    for held in out:
        q.done(held)
    return [h.offset for h in out]


def test_the_earliest_deadline_is_served_first_whatever_the_arrival_order() -> None:
    q = queue()
    for offset, deadline in enumerate([500, 100, 300, 200, 400]):
        q.push("t", 0, offset, Item(deadline))
    assert served(q, 2) == [1, 3]
    q.push("t", 0, 5, Item(50))  # a new session's first segment arrives: it goes next
    assert served(q, 10) == [5, 2, 4, 0]
    assert len(q) == 0


def test_late_work_is_served_after_waiting_long_enough_and_grace_keeps_playable_work_on_time() -> None:
    q: DeadlineQueue[Item] = DeadlineQueue(lambda i: i.deadline, grace_ms=1000, late_max_wait_ms=5000)
    q.push("t", 0, 0, Item(100))  # late at 1500 (100 + 1000 of grace)
    q.push("t", 0, 1, Item(1000))  # past its deadline at 1500, within the grace: still served as on time
    for offset in range(2, 12):
        q.push("t", 0, offset, Item(10_000 + offset))
    assert served(q, 1, now=1500) == [1]
    assert served(q, 1, now=1500) == [2]  # the late one waits behind on-time work...
    assert served(q, 1, now=6499) == [3]
    assert served(q, 1, now=6500) == [0]  # ...for at most late_max_wait_ms
    assert served(q, 1, now=6500) == [4]


def test_a_backlog_of_late_work_cannot_starve_on_time_work() -> None:
    """After a broker restart: many records late at once, on-time ones arriving behind them."""
    q: DeadlineQueue[Item] = DeadlineQueue(lambda i: i.deadline, late_max_wait_ms=5000)
    for offset in range(20):
        q.push("t", 0, offset, Item(100))
    for offset in range(20, 30):
        q.push("t", 0, offset, Item(100_000))
    assert served(q, 1, now=1000) == [20]  # the late ones wait
    order = [served(q, 1, now=6000 + 100 * i)[0] for i in range(11)]
    assert [o for o in order if o < 20] == [0, 1]  # one aged late record a second (6.0 s, 7.0 s)...
    assert len(order) == 11  # ...and on-time work between them


def test_late_work_waits_until_no_on_time_work_is_held() -> None:
    q = queue()
    q.push("t", 0, 0, Item(100))  # late at now=150
    q.push("t", 0, 1, Item(120))  # late
    q.push("t", 0, 2, Item(900))
    q.push("t", 0, 3, Item(800))
    assert served(q, 1, now=150) == [3]
    assert served(q, 1, now=150) == [2]
    assert served(q, 5, now=150) == [0, 1]  # in arrival order, once nothing on time is left


def test_a_newer_version_of_a_held_position_supersedes_the_older() -> None:
    q = queue()
    assert q.push("t", 0, 0, Item(100, "a", 1)) is None
    assert q.push("t", 0, 1, Item(200, "b", 1)) is None
    assert q.push("t", 0, 2, Item(100, "a", 2)) == Item(100, "a", 1)
    assert q.push("t", 0, 3, Item(100, "a", 1)) == Item(100, "a", 1)  # older than the one held: never served
    assert q.push("t", 0, 4, Item(200, "b", 1)) == Item(200, "b", 1)  # the same again (a replay): served once
    assert len(q) == 2
    assert served(q, 10) == [2, 1]
    assert q.committable() == {("t", 0): 5}


def test_a_position_served_already_is_not_superseded_afterwards() -> None:
    q = queue()
    q.push("t", 0, 0, Item(100, "a", 1))
    assert served(q, 1) == [0]
    assert q.push("t", 0, 1, Item(100, "a", 2)) is None  # the replacement is served too
    assert served(q, 1) == [1]


def test_commits_stop_below_the_lowest_offset_not_done() -> None:
    q = queue()
    for offset, deadline in enumerate([300, 100, 200]):
        q.push("t", 0, offset, Item(deadline))
    q.push("t", 1, 7, Item(50))
    q.taken("t", 1, 8)  # dead-lettered on decoding: done at once
    assert q.committable() == {("t", 0): 0, ("t", 1): 7}
    assert served(q, 1) == [7]
    assert q.committable() == {("t", 0): 0, ("t", 1): 9}
    assert served(q, 1) == [1]
    assert q.committable() == {("t", 0): 0, ("t", 1): 9}  # offset 0 is still held
    in_service = q.take(1, 0)
    assert [h.offset for h in in_service] == [2]
    assert q.committable()[("t", 0)] == 0
    assert served(q, 1) == [0]
    assert q.committable()[("t", 0)] == 2  # offset 2 was taken but not done (its handler may fail)
    q.done(in_service[0])
    assert q.committable()[("t", 0)] == 3


def test_a_superseded_record_is_done_and_does_not_hold_commits_back() -> None:
    q = queue()
    q.push("t", 0, 0, Item(100, "a", 1))
    q.push("t", 0, 1, Item(100, "a", 2))
    assert q.committable() == {("t", 0): 1}
    assert served(q, 5) == [1]
    assert q.committable() == {("t", 0): 2}


def test_dropped_partitions_are_forgotten_and_the_rest_still_served() -> None:
    q = queue()
    q.push("t", 0, 0, Item(100, "a", 1))
    q.push("t", 1, 0, Item(200))
    q.push("t", 1, 1, Item(50))
    q.drop([("t", 1)])
    assert len(q) == 1
    assert q.committable() == {("t", 0): 0}
    assert served(q, 5) == [0]
    q.push("t", 1, 0, Item(300, "a", 1))  # the partition comes back: consumed again from its commit
    assert [(h.partition, h.offset) for h in q.take(5, 0)] == [(1, 0)]


def test_a_replacement_of_a_served_position_yields_to_first_versions() -> None:
    q: DeadlineQueue[Item] = DeadlineQueue(lambda i: i.deadline, lambda i: (i.position, i.version),
                                           replacement_delay_ms=2000)
    q.push("t", 0, 0, Item(1000, "a", 1))
    assert served(q, 1) == [0]
    q.push("t", 0, 1, Item(1000, "a", 2))  # the scheduler replanned "a": a replacement
    q.push("t", 0, 2, Item(2500, "b", 1))  # a first version due 1.5 s later goes first
    q.push("t", 0, 3, Item(3500, "c", 1))  # one due 2.5 s later does not
    assert served(q, 3) == [2, 1, 3]
    q.push("t", 0, 4, Item(100, "a", 3))
    assert served(q, 1, now=150) == [4]  # lateness is judged by its own deadline: late, but alone
