"""Admission control: a listener is served only while they can be served on time.

Beyond capacity, serving everyone makes everyone late. Each inference instance decides for the
listeners on its own partitions (keyed by listener, not session: the scheduler serves one
session per listener, so a client that keeps opening sessions holds one place, not many):

* A listener is **active** while one of their requests was admitted within ``ACTIVE_MS``. An
  active listener's requests are always admitted: a listener being served is never dropped for
  a newcomer. So is a session that was admitted before (``continuing``: the service keeps a
  durable mark in the segment store), so after a restart, a rebalance or a pause the sessions
  being served stay served.
* Anyone else is admitted only while the instance has **room**: fewer active listeners than its
  capacity and not behind; and at most a tenth of the capacity is admitted in any second (a slow
  start: the cost each admission adds is measured before the next ones come in; a listener over
  that share is not refused, only not served this second: their next request asks again). Capacity
  is ``floor(target_load / cost)``, where ``cost`` is the measured compute time per second of
  audio (wall time, so a CPU shared with other services counts; a moving average over
  generated batches), never below what the densest music (a sprint: 2 bars at 170 BPM, full
  energy) cost in a warm-up at start-up, so listeners admitted at rest can all start running:
  every active listener needs one second of audio per second. *Behind* means a segment was generated with less than
  ``SLACK_MIN_MS``, or reached soundtrack.segments.v1 watermarked (the end of the music path,
  whatever runs late on the way) with less than ``DELIVERED_SLACK_MIN_MS``, before its deadline
  within the last ``BEHIND_MS``. With no one active,
  anyone is admitted (a capacity measured below one cannot lock everyone out).
* Otherwise the session is **refused** for ``RETRY_MS``: its requests are not generated, and
  the decision is announced (AT_CAPACITY on soundtrack.admissions.v1, again at each retry that
  is refused; ADMITTED when it is served after a refusal), so the listener's app can say so and
  keep its fallback playing.
* **Shedding.** Capacity is measured on inference alone; when the services share a machine,
  more can be admitted than the machine serves, and then everyone runs late. While behind with
  at least 80% of the capacity active, the listener admitted last (within the last minute) is
  refused every ``SHED_EVERY_MS``, until the instance is on time again: the newest arrival goes
  first, never someone who has listened for long. Behind at a lower load is a fault (a restart,
  the broker away: a full `make chaos` shed listeners after its broker restart with the threshold
  at half), which shedding would not cure. A refused listener is not "continuing" until
  admitted again.

Decisions depend on load, so a replay after a crash may decide differently; a refused request
is like one dropped for its deadline (nothing is generated under its id), so one segment id
still names at most one audio.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

from prometheus_client import Counter

ACTIVE_MS = 15_000  # longer than the longest segment (1 bar at 60 BPM is 4 s): a served listener stays active
RETRY_MS = 10_000
BEHIND_MS = 10_000
SLACK_MIN_MS = 1_500  # healthy slack is >= 2 s (a new session's first request: 4 s start-up - 1.5 s margin)
DELIVERED_SLACK_MIN_MS = 500  # watermarked and on soundtrack.segments.v1 at least this long before the deadline
SHED_EVERY_MS = 2_000
SHED_ABOVE_SHARE = 0.8  # of the capacity active: only then is being behind taken for too many listeners
SHED_YOUNGER_THAN_MS = 60_000
SLOW_START_SHARE = 0.1  # of the capacity admitted per second at most
SMOOTHING = 0.2
SHED = Counter("entrain_inference_listeners_shed_total",
               "Listeners refused while being served because the instance stayed behind (the newest first).")
DEFERRED = Counter("entrain_inference_requests_deferred_total",
                   "Requests of a new listener not generated in a second that had admitted its share (slow start).")


@dataclass
class Admission:
    target_load: float = 0.75  # of the instance's core spent generating, leaving room for replans and bursts
    cost: float | None = None  # compute seconds per second of audio (None until measured: everyone admitted)
    floor_cost: float = 0.0  # the warm-up's cost of the densest music: capacity never counts on cheaper
    behind_until_ms: int = 0
    active: dict[Hashable, int] = field(default_factory=dict)
    refused: dict[Hashable, int] = field(default_factory=dict)
    admitted_at: dict[Hashable, int] = field(default_factory=dict)  # admitted here as new (not continuing)
    _shed_at_ms: int = -1_000_000
    _second: int = -1
    _admitted_this_second: int = 0
    _forgot_at_ms: int = -1_000_000

    @property
    def capacity(self) -> int | None:
        return None if self.cost is None else math.floor(self.target_load / max(self.cost, self.floor_cost, 1e-6))

    def admit(self, listener: Hashable, now_ms: int, continuing: bool = False) -> tuple[bool, str | None]:
        """(whether this request is generated, the decision to announce or None)."""
        self._forget(now_ms)
        if listener in self.active or (continuing and listener not in self.refused):
            self.active[listener] = now_ms
            return True, None
        until = self.refused.get(listener)
        if until is not None and now_ms < until:
            return False, None
        room = self._room(now_ms)
        if room == "yes":
            self.active[listener] = self.admitted_at[listener] = now_ms
            self._admitted_this_second += 1
            return True, "ADMITTED" if self.refused.pop(listener, None) is not None else None
        if room == "later":
            DEFERRED.inc()
            return False, None  # slow start: not this second; the listener's next request asks again
        self.refused[listener] = now_ms + RETRY_MS
        return False, "AT_CAPACITY"

    def measured(self, compute_s: float, audio_s: float) -> None:
        if audio_s <= 0:
            return
        sample = compute_s / audio_s
        self.cost = sample if self.cost is None else (1 - SMOOTHING) * self.cost + SMOOTHING * sample

    def shed(self, now_ms: int) -> Hashable | None:
        """While behind, every ``SHED_EVERY_MS`` the listener admitted last (within
        ``SHED_YOUNGER_THAN_MS``: not one who has listened for long, nor one continuing from before
        a restart) is refused for ``RETRY_MS``; returned, to be told. Else None."""
        if now_ms >= self.behind_until_ms or now_ms - self._shed_at_ms < SHED_EVERY_MS:
            return None
        if self.capacity is None or len(self.active) < SHED_ABOVE_SHARE * self.capacity:
            return None  # behind below capacity: a fault (a restart, the broker away), not too many listeners
        young = [(t, listener) for listener, t in self.admitted_at.items()
                 if listener in self.active and now_ms - t < SHED_YOUNGER_THAN_MS]
        if not young:
            return None
        _, listener = max(young, key=lambda item: item[0])
        self._shed_at_ms = now_ms
        del self.active[listener], self.admitted_at[listener]
        self.refused[listener] = now_ms + RETRY_MS
        SHED.inc()
        return listener

    def finished(self, slack_ms: int, now_ms: int, floor_ms: int = SLACK_MIN_MS) -> None:
        """A segment was generated (or delivered, with ``DELIVERED_SLACK_MIN_MS``) ``slack_ms``
        before its deadline."""
        if slack_ms < floor_ms:
            self.behind_until_ms = max(self.behind_until_ms, now_ms + BEHIND_MS)

    def _room(self, now_ms: int) -> str:
        """"yes", "later" (slow start: room, but not in this second) or "no"."""
        if now_ms // 1000 != self._second:
            self._second, self._admitted_this_second = now_ms // 1000, 0
        capacity = self.capacity
        if not self.active or capacity is None:
            return "yes"
        if now_ms < self.behind_until_ms or len(self.active) >= capacity:
            return "no"
        return "yes" if self._admitted_this_second < max(1, math.floor(SLOW_START_SHARE * capacity)) else "later"

    def _forget(self, now_ms: int) -> None:
        if now_ms - self._forgot_at_ms < 1000:
            return
        self._forgot_at_ms = now_ms
        for listener in [s for s, t in self.active.items() if now_ms - t > ACTIVE_MS]:
            del self.active[listener]
            self.admitted_at.pop(listener, None)
        for listener in [s for s, t in self.refused.items() if now_ms - t > RETRY_MS]:
            del self.refused[listener]  # expired a retry period ago: no longer "refused before"
