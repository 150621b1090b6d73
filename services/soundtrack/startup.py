"""How long a new session waits for its first sound, from measured time to a first segment.

A session's first segment must be in the playlist ``DEADLINE_MARGIN_MS`` (the player's margin)
before playback starts. How long that takes is generation plus watermarking plus the queue in
front of them: ~1 s on an idle pipeline, several seconds in a burst of starts. A constant start-up
delay is either too long when the pipeline is idle (silence the listener hears) or too short when it
is busy (an underrun at the very first segment). So the worker measures it: for every session's
first segment (sequence 0) on ``soundtrack.segments.v1``, the time from its request to the
verified record (its broker timestamp), and a new session starts playing

    margin + the ``QUANTILE`` of the last ``WINDOW`` such times + ``SLACK_MS``

after its first request, within [MIN_MS, MAX_MS]; DEFAULT_MS until ``MIN_SAMPLES`` are measured
(a worker that just started). The measurements follow load within a few sessions; a burst of
starts in the same second is priced by the slower first segments of the sessions just before
it, and beyond capacity by inference's admission control (a refused session is told so).

Pure: the caller passes each measurement in.
"""

from __future__ import annotations

from collections import deque

from kit.deadlines import PLAYER_MARGIN_MS

DEFAULT_MS = 6_000  # before anything is measured: the first sessions of a cold pipeline (inference's
# first model calls, every listener starting at once) took up to ~4.3 s, 234 ms past a 4 s default
MIN_MS = 2_000  # the player's margin plus half a second, at least
MAX_MS = 12_000  # a listener waiting longer is better told AT_CAPACITY (admission's job)
WINDOW = 32  # recent first segments: a burst shows within a few, an old one is forgotten after 32
QUANTILE = 0.9
MIN_SAMPLES = 3
SLACK_MS = 500  # the playlist poll and the player's fetch after the record is there


class StartupDelay:
    def __init__(self) -> None:
        self._recent: deque[int] = deque(maxlen=WINDOW)

    def observe(self, requested_ms: int, ready_ms: int) -> None:
        """A first segment requested at ``requested_ms`` was verified at ``ready_ms``."""
        self._recent.append(max(0, ready_ms - requested_ms))

    def delay_ms(self) -> int:
        if len(self._recent) < MIN_SAMPLES:
            return DEFAULT_MS
        ordered = sorted(self._recent)
        quantile = ordered[min(len(ordered) - 1, int(QUANTILE * len(ordered)))]
        return min(MAX_MS, max(MIN_MS, PLAYER_MARGIN_MS + quantile + SLACK_MS))
