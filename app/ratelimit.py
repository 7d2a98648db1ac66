"""Per-key rate limits: a token bucket per API key, in this process."""

from __future__ import annotations

import math
import time

from app.services.keys import KeyInfo


class TokenBucket:
    """`rate` tokens a second up to `burst`; a request takes one."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one will be there."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One bucket per key, in this process (the event loop's thread only: no lock needed)."""

    def __init__(self, default_rate: float, burst: int):
        self.default_rate, self.burst = default_rate, burst
        self.buckets: dict[int, TokenBucket] = {}

    def wait(self, key: KeyInfo) -> float:
        rate = key.rate if key.rate is not None else self.default_rate
        if rate <= 0:
            return 0.0
        bucket = self.buckets.get(key.id)
        if bucket is None or bucket.rate != rate:
            burst = max(self.burst, math.ceil(rate))  # at least a second's worth
            bucket = self.buckets[key.id] = TokenBucket(rate, burst)
        return bucket.take()
