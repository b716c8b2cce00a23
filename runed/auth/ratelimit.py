"""Per-credential token buckets: a sustained rate with a burst, refilled continuously."""

from __future__ import annotations

import time
from dataclasses import dataclass

# Buckets idle this long are full again anyway, so they can be forgotten.
_IDLE_SECONDS = 300.0
_SWEEP_EVERY = 10_000


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass(frozen=True)
class Quota:
    """One credential's standing right after a call was counted: what the REST ``RateLimit`` headers say.

    The bucket holds ``limit`` requests and refills at ``limit / window`` per second, so a full
    quota takes ``window`` seconds to come back; ``remaining`` may be spent at once, and the
    bucket is full again after ``reset`` seconds.
    """

    limit: int
    window: float
    remaining: int
    reset: float


class RateLimiter:
    """In-process limiter keyed by credential. ``rate`` 0 disables it.

    Each API role process keeps its own buckets: the limit applies per process, which on one box
    with one gRPC and one REST role is the documented behaviour.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(max(burst, 1))
        self._buckets: dict[str, _Bucket] = {}
        self._calls = 0

    def acquire(self, key: str, now: float | None = None) -> float:
        """Take one token. Returns 0 when allowed, else the seconds until a token is available."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        self._calls += 1
        if self._calls % _SWEEP_EVERY == 0:
            self._sweep(now)
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(self.burst, now)
        else:
            b.tokens = min(self.burst, b.tokens + (now - b.stamp) * self.rate)
            b.stamp = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / self.rate

    def quota(self, key: str, now: float | None = None) -> Quota | None:
        """``key``'s standing (see :class:`Quota`); None when the limiter is off."""
        if self.rate <= 0:
            return None
        now = time.monotonic() if now is None else now
        b = self._buckets.get(key)
        tokens = self.burst if b is None else min(self.burst, b.tokens + (now - b.stamp) * self.rate)
        return Quota(
            limit=int(self.burst),
            window=self.burst / self.rate,
            remaining=int(tokens),
            reset=(self.burst - tokens) / self.rate,
        )

    def _sweep(self, now: float) -> None:
        for k in [k for k, b in self._buckets.items() if now - b.stamp > _IDLE_SECONDS]:
            del self._buckets[k]
