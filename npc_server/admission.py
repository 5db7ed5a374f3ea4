"""Connection-rate limits per player and per client address."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from npc_server.protocol.connection import RateLimiter

MAX_TRACKED = 100_000


class ConnectLimiter:
    """One token bucket per key (player or address), the oldest forgotten past a cap."""

    def __init__(
        self, rate: float, burst: int, now: Callable[[], float], max_keys: int = MAX_TRACKED
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._now = now
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, RateLimiter] = OrderedDict()

    def allow_nowait(self, key: str) -> bool:
        """Count one connection for `key`; False when it is over its rate."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = RateLimiter(self.rate, self.burst, self._now)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take_nowait()

    def __len__(self) -> int:
        return len(self._buckets)


class TokenBudget:
    """Generated tokens per player per minute: a bucket that refills continuously.

    Spending may take a bucket below zero (a turn under way is not cut); a
    player whose bucket is empty may not start another turn until it refills.
    """

    def __init__(
        self, per_minute: int, now: Callable[[], float], max_keys: int = MAX_TRACKED
    ) -> None:
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._now = now
        self._max_keys = max_keys
        self._levels: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, player: str) -> float:
        level, at = self._levels.get(player, (float(self.per_minute), self._now()))
        return min(float(self.per_minute), level + (self._now() - at) * self._rate)

    def spend_nowait(self, player: str, tokens: int) -> None:
        self._levels[player] = (self._level(player) - tokens, self._now())
        self._levels.move_to_end(player)
        if len(self._levels) > self._max_keys:
            self._levels.popitem(last=False)

    def retry_after(self, player: str) -> float | None:
        """None if `player` may start a turn now, else seconds until it may."""
        level = self._level(player)
        if level > 0:
            return None
        return (1.0 - level) / self._rate
