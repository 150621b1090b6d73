"""Admission control: a session is served only while it can be served on time.

Beyond capacity, serving everyone makes everyone late. Each inference instance decides for the
sessions on its own partitions:

* A session is **active** while one of its requests was admitted within ``ACTIVE_MS``. An
  active session's requests are always admitted: a listener being served is never dropped for a
  newcomer. So is a request continuing a segment that was generated (the generation log has
  it): after a restart or a rebalance, the sessions being served stay served.
* A request of a session that is not active (a new session, or one refused earlier) is
  admitted only while the instance has **room**: fewer active sessions than its capacity, and
  not behind. Capacity is ``floor(target_load / cost)``, where ``cost`` is the measured compute
  time per second of audio (wall time, so a CPU shared with other services counts; a moving
  average over generated batches, first measured by a warm-up segment at start-up): every
  active session needs one second of audio per second. *Behind* means a request was dropped
  for its deadline, or a segment finished with less than ``SLACK_MIN_MS`` to spare, within the
  last ``BEHIND_MS``.
* Otherwise the session is **refused** for ``RETRY_MS``: its requests are not generated, and
  the decision is announced once (AT_CAPACITY on soundtrack.admissions.v1; ADMITTED once it is
  served again), so the listener's app can say so and keep its fallback playing.

Decisions depend on load, so a replay after a crash may decide differently; a refused request
is like one dropped for its deadline (nothing is generated under its id), so one segment id
still names at most one audio.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

ACTIVE_MS = 15_000  # longer than the longest segment (1 bar at 60 BPM is 4 s): a served session stays active
RETRY_MS = 10_000
BEHIND_MS = 10_000
SLACK_MIN_MS = 500
SMOOTHING = 0.2


@dataclass
class Admission:
    target_load: float = 0.75  # of the instance's core spent generating, leaving room for replans and bursts
    cost: float | None = None  # compute seconds per second of audio (None until measured: everyone admitted)
    behind_until_ms: int = 0
    active: dict[Hashable, int] = field(default_factory=dict)
    refused: dict[Hashable, int] = field(default_factory=dict)
    _forgot_at_ms: int = -1_000_000

    @property
    def capacity(self) -> int | None:
        return None if self.cost is None else math.floor(self.target_load / max(self.cost, 1e-6))

    def admit(self, session: Hashable, now_ms: int, continuing: bool = False) -> tuple[bool, str | None]:
        """(whether this request is generated, the decision to announce or None). ``continuing``:
        the request continues a segment that was generated (the session was being served, by
        this instance before a restart or by another before a rebalance): admitted like an
        active session."""
        self._forget(now_ms)
        if session in self.active or continuing:
            self.active[session] = now_ms
            return True, "ADMITTED" if self.refused.pop(session, None) is not None else None
        until = self.refused.get(session)
        if until is not None and now_ms < until:
            return False, None
        capacity = self.capacity
        if now_ms >= self.behind_until_ms and (capacity is None or len(self.active) < capacity):
            self.active[session] = now_ms
            return True, "ADMITTED" if self.refused.pop(session, None) is not None else None
        self.refused[session] = now_ms + RETRY_MS
        return False, "AT_CAPACITY"

    def measured(self, compute_s: float, audio_s: float) -> None:
        if audio_s <= 0:
            return
        sample = compute_s / audio_s
        self.cost = sample if self.cost is None else (1 - SMOOTHING) * self.cost + SMOOTHING * sample

    def finished(self, slack_ms: int, now_ms: int) -> None:
        """A request was answered (slack = deadline - now) or dropped for its deadline (slack <= 0)."""
        if slack_ms < SLACK_MIN_MS:
            self.behind_until_ms = now_ms + BEHIND_MS

    def _forget(self, now_ms: int) -> None:
        if now_ms - self._forgot_at_ms < 1000:
            return
        self._forgot_at_ms = now_ms
        for session in [s for s, t in self.active.items() if now_ms - t > ACTIVE_MS]:
            del self.active[session]
        for session in [s for s, t in self.refused.items() if now_ms - t > RETRY_MS]:
            del self.refused[session]  # expired a retry period ago: no longer "refused before"
