"""Duplicate suppression and per-key rate limits: pure, the clock is passed in."""

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


@dataclass
class TokenBucket:
    """``rate`` tokens per second, up to ``burst``; one token per event."""

    rate: float
    burst: float
    _tokens: float = -1.0
    _at_ms: int = 0

    def take(self, n: int, now_ms: int) -> float:
        """Take ``n`` tokens; return 0 on success, else the seconds to wait before retrying."""
        if self._tokens < 0:
            self._tokens, self._at_ms = self.burst, now_ms
        self._tokens = min(self.burst, self._tokens + (now_ms - self._at_ms) / 1000 * self.rate)
        self._at_ms = now_ms
        if n <= self._tokens:
            self._tokens -= n
            return 0.0
        return (n - self._tokens) / self.rate


@dataclass
class RateLimiter:
    """One token bucket per API key id."""

    rate: float
    burst: float
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def take(self, key_id: str, n: int, now_ms: int) -> float:
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = TokenBucket(self.rate, self.burst)
        return bucket.take(n, now_ms)
