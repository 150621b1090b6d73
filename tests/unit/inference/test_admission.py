"""Admission control: active listeners are always served; new ones only while there is room."""

from __future__ import annotations

from inference.admission import ACTIVE_MS, BEHIND_MS, RETRY_MS, SLACK_MIN_MS, Admission


def test_until_measured_everyone_is_admitted() -> None:
    admission = Admission()
    assert all(admission.admit(f"l{i}", 0) == (True, None) for i in range(500))


def test_capacity_is_the_target_load_over_the_measured_cost() -> None:
    admission = Admission(target_load=0.75)
    admission.measured(compute_s=0.5, audio_s=20.0)  # 40x real time
    assert admission.capacity == 30
    admission.measured(compute_s=1.5, audio_s=20.0)  # slower (a busy CPU): the average follows
    assert admission.capacity == 21  # 0.8 * 0.025 + 0.2 * 0.075 = 0.035 s per second of audio


def test_new_listeners_beyond_capacity_are_refused_and_told_once_per_retry() -> None:
    admission = Admission(target_load=1.0, cost=0.5)  # room for 2
    assert admission.admit("a", 0) == (True, None)
    assert admission.admit("b", 1000) == (True, None)
    assert admission.admit("c", 2000) == (False, "AT_CAPACITY")
    assert admission.admit("c", 3000) == (False, None)  # within its retry period: not announced again
    assert admission.admit("a", 4000) == (True, None)  # an active listener is always served
    assert admission.admit("c", 2000 + RETRY_MS) == (False, "AT_CAPACITY")  # considered again, still full


def test_a_refused_listener_is_admitted_when_room_frees_up_and_told_so() -> None:
    admission = Admission(target_load=1.0, cost=0.5)
    admission.admit("a", 0)
    admission.admit("b", 1000)
    assert admission.admit("c", 2000) == (False, "AT_CAPACITY")
    admission.admit("a", ACTIVE_MS)  # a keeps going; b went quiet
    later = 1000 + ACTIVE_MS + 1500  # b expired; c's retry period is over
    assert admission.admit("c", later) == (True, "ADMITTED")
    assert admission.admit("c", later + 100) == (True, None)


def test_slow_start_admits_a_tenth_of_the_capacity_a_second() -> None:
    admission = Admission(target_load=1.0, cost=0.02)  # room for 50: 5 new a second
    admission.admit("first", 0)  # nobody active: admitted whatever the rules
    decisions = [admission.admit(f"l{i}", 1500) for i in range(20)]
    assert decisions[:5] == [(True, None)] * 5
    assert decisions[5:] == [(False, None)] * 15  # not refused (nothing announced): asked again next time
    assert [admission.admit(f"l{i}", 2500)[0] for i in range(5, 20)].count(True) == 5
    assert admission.refused == {}


def test_falling_behind_closes_admission_for_a_while_but_not_for_active_listeners() -> None:
    admission = Admission()
    admission.admit("a", 0)
    admission.finished(slack_ms=SLACK_MIN_MS - 1, now_ms=1000)
    admission.measured(0.01, 1.0)
    assert admission.admit("b", 1000 + BEHIND_MS - 1) == (False, "AT_CAPACITY")
    assert admission.admit("a", 1000 + BEHIND_MS - 1) == (True, None)
    admission.finished(slack_ms=3000, now_ms=1000 + BEHIND_MS)  # finished with time to spare: no change
    assert admission.admit("d", 1000 + BEHIND_MS) == (True, None)


def test_a_session_admitted_before_is_served_after_a_restart_even_when_behind() -> None:
    admission = Admission(target_load=1.0, cost=0.5)
    admission.admit("someone", 0)
    admission.finished(slack_ms=-200, now_ms=0)  # the restarted instance catches up late
    assert admission.admit("new", 100) == (False, "AT_CAPACITY")
    assert admission.admit("served-before", 100, continuing=True) == (True, None)
    assert admission.admit("served-before", 200) == (True, None)


def test_a_capacity_below_one_cannot_lock_everyone_out() -> None:
    admission = Admission(target_load=0.75, cost=2.0)
    assert admission.capacity == 0
    assert admission.admit("a", 0) == (True, None)
    assert admission.admit("b", 0) == (False, "AT_CAPACITY")


def test_while_behind_the_newest_listener_is_shed_every_two_seconds_never_an_old_one() -> None:
    admission = Admission(target_load=1.0, cost=0.2)  # room for 5, 1 new a second
    for t in range(0, 61_000, 10_000):  # both keep listening
        admission.admit("old", t, continuing=True)  # served before this instance started
        admission.admit("veteran", t)
    for i in range(3):
        admission.admit(f"new{i}", 61_000 + i * 1000)
    admission.admit("veteran", 61_000)
    assert admission.shed(62_500) is None  # on time: nobody
    admission.finished(slack_ms=100, now_ms=62_500)
    assert admission.shed(62_500) == "new2"
    assert admission.shed(63_000) is None  # one every SHED_EVERY_MS
    assert admission.shed(64_500) == "new1"
    assert admission.shed(66_500) is None  # 3 of 5 active: below 80% of the capacity, no longer shed
    admission.cost = 0.25  # a slower machine: room for 4, so 3 active is 75%...
    assert admission.shed(66_500) is None
    admission.cost = 1 / 3.5  # ...room for 3: full again
    assert admission.shed(66_500) == "new0"
    assert admission.shed(68_500) is None  # "veteran" has listened for over a minute, "old" from before
    assert admission.admit("new2", 63_000) == (False, None)
    assert admission.admit("new2", 63_000, continuing=True) == (False, None)  # its mark does not bring it back


def test_behind_at_a_low_load_is_a_fault_and_nobody_is_shed() -> None:
    admission = Admission(target_load=1.0, cost=0.1)  # room for 10
    for i in range(5):
        admission.admit(f"l{i}", i * 1000)
    admission.finished(slack_ms=-3000, now_ms=5000, floor_ms=500)  # e.g. delivered late after a broker restart
    assert admission.shed(5000) is None
    assert admission.admit("new", 5500) == (False, "AT_CAPACITY")  # new arrivals wait until it is on time


def test_capacity_never_counts_on_music_cheaper_than_the_densest() -> None:
    admission = Admission(target_load=1.0, cost=0.05, floor_cost=0.05)  # the warm-up's sprint
    admission.measured(compute_s=0.2, audio_s=20.0)  # music at rest is cheaper
    assert admission.capacity == 20
