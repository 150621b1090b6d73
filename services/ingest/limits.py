"""Duplicate suppression of event ids: pure, the clock is passed in."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class DedupWindow:
    """Remembers ids for ``window_ms`` (bounded to ``max_ids``, oldest forgotten first).

    Ingest records an id only after the broker acknowledged its event, so a client
    retrying after a 503 is never told "duplicate" for an event that was lost.
    """

    window_ms: int
    max_ids: int = 1_000_000
    _seen: OrderedDict[str, int] = field(default_factory=OrderedDict)

    def seen(self, event_id: str, now_ms: int) -> bool:
        self._expire(now_ms)
        return event_id in self._seen

    def remember(self, event_id: str, now_ms: int) -> None:
        self._seen[event_id] = now_ms
        self._seen.move_to_end(event_id)
        while len(self._seen) > self.max_ids:
            self._seen.popitem(last=False)

    def _expire(self, now_ms: int) -> None:
        horizon = now_ms - self.window_ms
        while self._seen:
            oldest_id, at = next(iter(self._seen.items()))
            if at >= horizon:
                break
            del self._seen[oldest_id]
