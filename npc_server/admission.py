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
