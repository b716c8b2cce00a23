"""Token buckets: burst, sustained rate, independent keys, retry hints."""

from __future__ import annotations

import pytest

from runed.auth.ratelimit import RateLimiter


def test_burst_then_refusal_with_retry_hint() -> None:
    rl = RateLimiter(rate=2.0, burst=3)
    assert [rl.acquire("a", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = rl.acquire("a", now=100.0)
    assert wait == pytest.approx(0.5)


def test_refills_at_the_sustained_rate() -> None:
    rl = RateLimiter(rate=10.0, burst=1)
    assert rl.acquire("a", now=0.0) == 0.0
    assert rl.acquire("a", now=0.05) > 0
    assert rl.acquire("a", now=0.2) == 0.0


def test_keys_are_independent() -> None:
    rl = RateLimiter(rate=1.0, burst=1)
    assert rl.acquire("a", now=0.0) == 0.0
    assert rl.acquire("a", now=0.0) > 0
    assert rl.acquire("b", now=0.0) == 0.0


def test_zero_rate_disables() -> None:
    rl = RateLimiter(rate=0.0, burst=0)
    assert all(rl.acquire("a", now=0.0) == 0.0 for _ in range(10_000))
