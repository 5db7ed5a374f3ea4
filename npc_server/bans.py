"""Bans: players a kick keeps out for a while (`POST /api/kick {player, ban}`).

A kick closes a player's sockets; a token outlives it. A ban refuses every
`hello` for the player (a new session or a resume, with any token, however
fresh) with close code 4508 until it ends or the game lifts it
(`POST /api/unban`).

Each node keeps the bans it was told of (the kick and the lift reach every
live node), on its own clock; in a cluster the ban is also a Redis key,
`npc:ban:<player>`, that expires with it, so a node that starts later, or
missed the message, finds it when the player says hello. Redis away: the
node's own copy decides (a node that never heard of the ban lets the player
in until Redis is back).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from npc_server.brokers import live_redis
from npc_server.logs import sparse

log = logging.getLogger(__name__)

KEY = "npc:ban:"
MAX_BAN_S = 30 * 86400
CALL_TIMEOUT = 1.0
# Past this many bans in the table, a new one first drops those that have ended.
PURGE_AT = 10_000


class Bans:
    """The bans this node knows, and (with `client`) the cluster's in Redis."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, broker: Any = None) -> None:
        self._clock = clock
        self._broker = broker  # a RedisBroker in a cluster (its redis-py `client`)
        self._until: dict[str, float] = {}
        self._purge_at = PURGE_AT
        self._failures = 0

    # --- this node's copy (sans I/O) ---------------------------------------

    def note(self, player: str, seconds: float) -> None:
        """Refuse `player` for `seconds` from now on this node."""
        if len(self._until) >= self._purge_at:
            now = self._clock()
            self._until = {p: t for p, t in self._until.items() if t > now}
            # Many bans still running: the next purge waits until the table doubles, so
            # a purge costs O(1) a ban, however many run.
            self._purge_at = max(PURGE_AT, 2 * len(self._until))
        self._until[player] = self._clock() + seconds

    def forget(self, player: str) -> bool:
        """Lift the ban on this node; whether there was one still running."""
        until = self._until.pop(player, None)
        return until is not None and until > self._clock()

    def remaining(self, player: str) -> float:
        """Seconds the player stays refused on this node's knowledge (0: not banned)."""
        until = self._until.get(player)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._until[player]
            return 0.0
        return left

    def __len__(self) -> int:
        return len(self._until)

    # --- the cluster's, in Redis --------------------------------------------

    @property
    def shared(self) -> bool:
        """Whether bans are also kept in Redis (a cluster node)."""
        return getattr(self._broker, "client", None) is not None

    def _client(self) -> Any:
        return live_redis(self._broker) if self._broker is not None else None

    async def ban(self, player: str, seconds: int) -> None:
        """Ban `player` here and, in a cluster, in Redis (raises if Redis cannot be told:
        a ban other nodes would not find is no ban)."""
        if self.shared:
            client = self._client()
            if client is None:
                raise ConnectionError("Redis is away")
            async with asyncio.timeout(CALL_TIMEOUT):
                await client.set(KEY + player, b"1", px=seconds * 1000)
        self.note(player, seconds)

    async def lift(self, player: str) -> bool:
        """Lift the ban in Redis and here; whether one was running (there or here). If
        Redis cannot be told, nothing changes (raises)."""
        lifted = False
        if self.shared:
            client = self._client()
            if client is None:
                raise ConnectionError("Redis is away")
            async with asyncio.timeout(CALL_TIMEOUT):
                lifted = bool(await client.delete(KEY + player))
        return self.forget(player) or lifted

    async def remaining_shared(self, player: str) -> float:
        """Seconds the player stays refused: Redis's word in a cluster (and this node's
        copy follows it), this node's alone without Redis or when it cannot be asked."""
        client = self._client()
        if client is None:
            return self.remaining(player)
        before = self._until.get(player)
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                left_ms = await client.pttl(KEY + player)
        except Exception as exc:
            self._failures += 1
            if sparse(self._failures):
                log.warning("bans read from this node's copy, Redis did not answer: %s", exc)
            return self.remaining(player)
        if self._until.get(player) != before:
            # A kick or a lift reached this node while Redis answered: that is newer than
            # the answer (a read just before a kick's SET would let the player in).
            return self.remaining(player)
        if not isinstance(left_ms, int) or left_ms <= 0:
            # -2: no key; -1: a key without a TTL is no ban of ours. Lifted elsewhere.
            self._until.pop(player, None)
            return 0.0
        seconds = min(left_ms / 1000, MAX_BAN_S)
        if before is None or abs(before - self._clock() - seconds) > 1.0:
            self.note(player, seconds)  # this node's copy follows Redis
        return seconds


def refusal_reason(seconds: float) -> str:
    """The close reason a banned player's socket gets."""
    left = max(1, round(seconds))
    return f"banned for {left} more second{'' if left == 1 else 's'}"
