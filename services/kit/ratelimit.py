"""Token-bucket rate limits per key (API key, listener, app): pure, the clock is passed in.

State is bounded: a bucket left alone for ``burst / rate`` seconds has refilled completely,
so it is indistinguishable from a new one and is dropped when the limiter sweeps (at most
every ``sweep_every`` new keys). A flood of distinct keys therefore costs memory only for
the keys active within one refill time.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
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
        self._tokens = min(self.burst, self._tokens + max(0, now_ms - self._at_ms) / 1000 * self.rate)
        self._at_ms = max(self._at_ms, now_ms)
        if n <= self._tokens:
            self._tokens -= n
            return 0.0
        return (n - self._tokens) / self.rate

    def full_at_ms(self) -> int:
        """When this bucket will have refilled to ``burst`` if nobody takes from it."""
        return self._at_ms + int((self.burst - max(0.0, self._tokens)) / self.rate * 1000) + 1


@dataclass
class RateLimiter:
    """One token bucket per key (an API key id, a listener id, an app id)."""

    rate: float
    burst: float
    sweep_every: int = 10_000
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)
    _new_since_sweep: int = 0

    def take(self, key: str, n: int, now_ms: int) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            self._new_since_sweep += 1
            if self._new_since_sweep >= self.sweep_every:
                self.sweep(now_ms)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
        return bucket.take(n, now_ms)

    def sweep(self, now_ms: int) -> int:
        """Drop every bucket that has refilled completely; returns how many were dropped."""
        idle = [key for key, bucket in self._buckets.items() if bucket.full_at_ms() <= now_ms]
        for key in idle:
            del self._buckets[key]
        self._new_since_sweep = 0
        return len(idle)

    @property
    def keys_held(self) -> int:
        """How many buckets are in memory (no ``__len__``: an empty limiter must stay truthy)."""
        return len(self._buckets)
