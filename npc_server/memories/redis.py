"""Memory in Redis: an NPC remembers a player on any node, after restarts, for `ttl`.

One string key per NPC and audience, `npc:mem:<npc>:<audience key>` (the
audience key is `player:<id>` or `room:<id>`), holding the lines as one
versioned msgpack value (`codec.py`), at most the NPC's `memory_chars`
characters of text. Each save is `SET key value PX ttl`, so a memory lives
`ttl` after the last turn that changed it.

Saves are written behind: `save_nowait` records the latest lines of a key,
and one task writes everything recorded meanwhile in one pipeline, at most
one every `WRITE_EVERY` (50 ms; at once after a quiet spell), and of several
saves of a key the latest wins. A write that fails is kept (unless a newer save replaced it)
and retried after `RETRY_AFTER`; so are loads refused meanwhile (`None`),
so that a turn never waits on a Redis that is away. A stored value that is
not ours (another version, truncated, another type) is logged once per key
and read as empty; the next save replaces it.

Room memories are also indexed, in one sorted set `npc:mem:rooms` (member:
the memory's key; score: its last save, ms of the writing node's clock), and
at most `max_room_memories` of them are kept: each write drops the index's
expired members and, past the cap, deletes the room memories saved longest
ago. Room names are the clients' choice, so a client hopping through fresh
rooms would otherwise fill Redis for `ttl` (30 days); now it pushes out
other rooms' memories only, never a player's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from npc_server.backends.base import MemoryEntry
from npc_server.memories import codec
from npc_server.memories.base import Lines, MemoryStatistics, is_room
from npc_server.memory import bounded
from npc_server.redaction import redacted_url

log = logging.getLogger(__name__)

KEY_PREFIX = "npc:mem:"
TIMEOUT = 2.0  # per command or pipeline: a load never holds a turn longer
RETRY_AFTER = 1.0  # after a failure: loads answer None and writes wait this long
MAX_PENDING = 100_000  # keys waiting to be written; past it the oldest is dropped
WRITE_EVERY = 0.05  # seconds at least between two writes of saved memories
APPEND_ATTEMPTS = 32  # optimistic transactions lost to concurrent writers (one wins each)
MAX_WARNED = 1024


MAX_ROOM_MEMORIES = 50_000  # over every NPC: ~100 MB at 2,000 characters each
ROOMS_INDEX = KEY_PREFIX + "rooms"

# KEYS[1] the index; ARGV: now ms, ttl ms, cap, then the room memories just written.
# Another type at the index (a stray key) is replaced. Returns the memories deleted.
INDEX_ROOMS = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'zset' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
local now, ttl, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 4, #ARGV do redis.call('ZADD', KEYS[1], now, ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
local over = redis.call('ZCARD', KEYS[1]) - cap
local deleted = 0
while over > 0 do
  local victims = redis.call('ZRANGE', KEYS[1], 0, math.min(over, 1000) - 1)
  deleted = deleted + redis.call('DEL', unpack(victims))
  redis.call('ZREM', KEYS[1], unpack(victims))
  over = over - #victims
end
redis.call('PEXPIRE', KEYS[1], ttl)
return deleted
"""


class _Save(NamedTuple):
    lines: Lines
    room: bool  # a room memory: indexed and capped (an NPC id may hold ':', so the key cannot say)


def memory_key(npc_id: str, audience_key: str) -> str:
    return f"{KEY_PREFIX}{npc_id}:{audience_key}"


class RedisMemoryStore:
    """A `MemoryStore` on one Redis; the client connects on first use, in the running loop."""

    def __init__(
        self,
        url: str,
        ttl: float,
        *,
        timeout: float = TIMEOUT,
        max_room_memories: int = MAX_ROOM_MEMORIES,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.ttl = ttl
        self.timeout = timeout
        self.max_room_memories = max_room_memories
        self._wall = wall
        self._clock = clock
        self._redis: Any = None
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
        # Saved lines by key, and whether the key is a room memory (indexed as it is written).
        self._pending: dict[str, _Save] = {}
        self._writing: dict[str, _Save] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._down_until = float("-inf")
        self._written_at = float("-inf")
        self._healthy = True
        self._warned: set[str] = set()
        self._loads = self._saves = self._written = self._failed = self._rejected = 0
        self._writes = 0

    # --- reading ------------------------------------------------------------

    async def load(self, npc_id: str, audience_key: str) -> Lines | None:
        self._loads += 1
        key = memory_key(npc_id, audience_key)
        latest = self._pending.get(key, self._writing.get(key))
        if latest is not None:
            return latest.lines  # saved here and not yet written: newer than Redis
        if self._down():
            self._failed += 1
            return None
        try:
            async with asyncio.timeout(self.timeout):
                raw = await self._client().get(key)
        except self._errors as exc:
            if _wrong_type(exc):
                return self._reject(key, "a Redis value of another type")
            self._fail("load", exc)
            return None
        self._answered()
        return () if raw is None else self._decoded(key, raw)

    def _decoded(self, key: str, raw: Any) -> Lines:
        try:
            return codec.decode(raw)
        except codec.MemoryFormatError as exc:
            return self._reject(key, str(exc))

    def _reject(self, key: str, why: str) -> Lines:
        self._rejected += 1
        if key not in self._warned:
            if len(self._warned) >= MAX_WARNED:
                self._warned.clear()
            self._warned.add(key)
            log.warning("memory %s is not one this server wrote (%s); read as empty", key, why)
        return ()

    # --- writing ------------------------------------------------------------

    def save_nowait(self, npc_id: str, audience_key: str, lines: Lines) -> None:
        self._saves += 1
        key = memory_key(npc_id, audience_key)
        self._pending.pop(key, None)  # to the end: the oldest save is dropped first
        self._pending[key] = _Save(lines, is_room(audience_key))
        while len(self._pending) > MAX_PENDING:
            del self._pending[next(iter(self._pending))]
            self._failed += 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._write_pending(), name="memory-writer"
            )

    async def _write_pending(self) -> None:
        while self._pending:
            # At most one write per WRITE_EVERY (at once after a quiet spell): a busy node
            # saves at each turn's start and end, and one pipeline per save cost it ~10 us
            # of every token it streamed.
            wait = max(self._down_until, self._written_at + WRITE_EVERY) - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            self._written_at = self._clock()
            self._writing, self._pending = self._pending, {}
            try:
                await self._write(self._writing)
                self._writes += 1
                self._written += len(self._writing)
                self._answered()
            except self._errors as exc:
                self._fail("save", exc)
                for key, save in self._writing.items():
                    self._pending.setdefault(key, save)  # unless saved again meanwhile
            finally:
                self._writing = {}

    async def _write(self, batch: dict[str, _Save]) -> None:
        async with asyncio.timeout(self.timeout):
            pipe = self._client().pipeline(transaction=False)
            for key, save in batch.items():
                pipe.set(key, codec.encode(save.lines), px=self._px)
            self._index_rooms(pipe, [key for key, save in batch.items() if save.room])
            await pipe.execute()

    def _index_rooms(self, pipe: Any, keys: Sequence[str]) -> None:
        if keys:
            now = round(self._wall() * 1000)
            args = (now, self._px, self.max_room_memories, *keys)
            pipe.eval(INDEX_ROOMS, 1, ROOMS_INDEX, *args)

    @property
    def _px(self) -> int:
        return max(1, round(self.ttl * 1000))

    async def append(
        self, npc_id: str, audience_key: str, entries: Sequence[MemoryEntry], max_chars: int
    ) -> bool:
        await self._flush_briefly()  # this node's own saves of the key go first
        key = memory_key(npc_id, audience_key)
        try:
            async with asyncio.timeout(self.timeout):
                return await self._append(key, is_room(audience_key), entries, max_chars)
        except self._errors as exc:
            self._fail("append", exc)
            return False

    async def _append(
        self, key: str, room: bool, entries: Sequence[MemoryEntry], max_chars: int
    ) -> bool:
        from redis.exceptions import WatchError

        async with self._client().pipeline(transaction=True) as pipe:
            for _ in range(APPEND_ATTEMPTS):
                try:
                    await pipe.watch(key)
                    stored = await self._watched(pipe, key)
                    pipe.multi()
                    lines = bounded((*stored, *entries), max_chars)
                    pipe.set(key, codec.encode(lines), px=self._px)
                    self._index_rooms(pipe, [key] if room else [])
                    await pipe.execute()
                    self._written += 1
                    self._answered()
                    return True
                except WatchError:
                    continue  # another writer came between: read again
        log.warning("memory %s: append lost %d times to other writers", key, APPEND_ATTEMPTS)
        return False

    async def _watched(self, pipe: Any, key: str) -> Lines:
        try:
            raw = await pipe.get(key)
        except self._errors as exc:
            if _wrong_type(exc):
                return self._reject(key, "a Redis value of another type")
            raise
        return () if raw is None else self._decoded(key, raw)

    async def flush(self) -> None:
        while self._flusher is not None and not self._flusher.done():
            await asyncio.wait({self._flusher})  # a cancelled wait leaves the writer running

    async def _flush_briefly(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout):
                await self.flush()

    # --- state --------------------------------------------------------------

    def _client(self) -> Any:
        if self._redis is None:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import RedisError

            from npc_server.brokers.redis import client_options

            self._errors = (RedisError, OSError, TimeoutError)
            # No retries inside the client: a failure is ours to count and back off from.
            self._redis = aioredis.Redis.from_url(
                self.url,
                socket_connect_timeout=self.timeout,
                socket_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
                **client_options(),
            )
        return self._redis

    def _down(self) -> bool:
        return self._clock() < self._down_until

    def _fail(self, what: str, exc: BaseException) -> None:
        self._failed += 1
        if self._healthy:  # once per outage, not once per turn
            self._healthy = False
            log.warning(
                "memory %s failed, Redis at %s: %s; conversations starting meanwhile go "
                "without their memory, saves wait",
                what,
                redacted_url(self.url),
                exc or type(exc).__name__,
            )
        self._down_until = self._clock() + RETRY_AFTER

    def _answered(self) -> None:
        self._down_until = float("-inf")
        if not self._healthy:
            self._healthy = True
            log.info("memory: Redis at %s answers again", redacted_url(self.url))

    def statistics(self) -> MemoryStatistics:
        pending = len(self._pending) + len(self._writing)
        return MemoryStatistics(
            0,
            pending,
            self._loads,
            self._saves,
            self._written,
            self._failed,
            self._rejected,
            self._writes,
        )

    async def aclose(self) -> None:
        await self._flush_briefly()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


def _wrong_type(exc: BaseException) -> bool:
    return str(exc).startswith("WRONGTYPE")
