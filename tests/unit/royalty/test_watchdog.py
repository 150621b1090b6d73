"""The watchdog ends a process whose guarded step hangs (and leaves a quick one alone)."""

from __future__ import annotations

import time

from royalty.service import Watchdog


def test_a_step_that_outlives_its_limit_exits_and_a_quick_one_does_not() -> None:
    exits: list[int] = []
    watchdog = Watchdog(0.2, exit=exits.append)
    with watchdog.guard("quick"):
        time.sleep(0.05)
    time.sleep(0.3)
    assert exits == []
    with watchdog.guard("hangs"):
        time.sleep(0.6)
    assert exits and exits[0] == 70
