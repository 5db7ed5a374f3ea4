"""The memory store contract, run against every implementation (Redis on a real redis-server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis

from npc_server.backends.base import MemoryEntry
from npc_server.memories import LocalMemoryStore, MemoryStore
from npc_server.memories.redis import RedisMemoryStore
from tests.support.redis import RedisServer, redis_server

TTL = 3600.0
ALICE = "player:alice"


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


STORES: dict[str, Callable[[RedisServer], MemoryStore]] = {
    "local": lambda redis: LocalMemoryStore(TTL),
    "redis": lambda redis: RedisMemoryStore(redis.url, TTL),
}


@asynccontextmanager
async def opened(kind: str, redis: RedisServer) -> AsyncIterator[MemoryStore]:
    store = STORES[kind](redis)
    try:
        yield store
    finally:
        await store.aclose()


@asynccontextmanager
async def successor(
    kind: str, store: MemoryStore, redis: RedisServer
) -> AsyncIterator[MemoryStore]:
    """Another reader of what `store` wrote: a new Redis client; in the process, itself."""
    if kind == "local":
        yield store
    else:
        async with opened(kind, redis) as other:
            yield other


def said(*texts: str) -> tuple[MemoryEntry, ...]:
    """Lines alternating between alice and the NPC, starting with alice."""
    return tuple(
        MemoryEntry("player", "alice", t) if i % 2 == 0 else MemoryEntry("npc", "mira", t)
        for i, t in enumerate(texts)
    )


pytestmark = pytest.mark.parametrize("kind", sorted(STORES))


async def test_a_stranger_has_no_memory(
    kind: str, redis: RedisServer, request: pytest.FixtureRequest
) -> None:
    """Loading what was never saved gives an empty memory, not None (None means unavailable)."""
    async with opened(kind, redis) as store:
        assert await store.load("mira", f"player:stranger-{request.node.name}") == ()


async def test_saved_lines_load_back_in_another_store(kind: str, redis: RedisServer) -> None:
    """What one store wrote, another reads (on Redis: a new client, as a restarted node),
    tool lines included."""
    tool = MemoryEntry("tool", "weather", '{"sky":"grey"}', "c-1", "{}")
    lines = (*said("hello", "Hi there"), tool)
    async with opened(kind, redis) as store:
        store.save_nowait("mira", "player:carol", lines)
        await store.flush()
        async with successor(kind, store, redis) as other:
            assert await other.load("mira", "player:carol") == lines


async def test_a_load_right_after_a_save_sees_it(kind: str, redis: RedisServer) -> None:
    """A save is visible to loads of the same store at once, before it is written."""
    async with opened(kind, redis) as store:
        store.save_nowait("mira", "player:dave", said("one"))
        assert await store.load("mira", "player:dave") == said("one")


async def test_the_latest_save_wins(kind: str, redis: RedisServer) -> None:
    """Several saves of one key in one loop iteration: the last is what is stored."""
    async with opened(kind, redis) as store:
        for n in range(1, 6):
            store.save_nowait("mira", "player:erin", said(*(f"line {i}" for i in range(n))))
        await store.flush()
        async with successor(kind, store, redis) as other:
            expected = said(*(f"line {i}" for i in range(5)))
            assert await other.load("mira", "player:erin") == expected


async def test_keys_are_per_npc_and_audience(kind: str, redis: RedisServer) -> None:
    """Another NPC, another player or a room with the same name are other memories."""
    async with opened(kind, redis) as store:
        store.save_nowait("mira", "player:frank", said("to mira"))
        store.save_nowait("guard", "player:frank", said("to the guard"))
        store.save_nowait("mira", "room:frank", said("in the room"))
        await store.flush()
        assert await store.load("mira", "player:frank") == said("to mira")
        assert await store.load("guard", "player:frank") == said("to the guard")
        assert await store.load("mira", "room:frank") == said("in the room")
        assert await store.load("mira", "player:gina") == ()


async def test_append_adds_after_what_is_stored_and_keeps_the_bound(
    kind: str, redis: RedisServer
) -> None:
    """`append` puts entries after the stored lines, dropping the oldest past max_chars."""
    async with opened(kind, redis) as store:
        store.save_nowait("mira", "player:hana", said("aaaa", "bbbb"))
        await store.flush()
        seen = (MemoryEntry("npc", "mira", "cccc"),)
        assert await store.append("mira", "player:hana", seen, max_chars=8) is True
        assert await store.load("mira", "player:hana") == (*said("aaaa", "bbbb")[1:], *seen)


async def test_append_to_a_stranger_creates_the_memory(kind: str, redis: RedisServer) -> None:
    """Appending where nothing is stored stores the entries, cut to max_chars."""
    async with opened(kind, redis) as store:
        long = MemoryEntry("npc", "mira", "x" * 50)
        assert await store.append("mira", "player:ivan", [long], max_chars=20)
        [line] = await store.load("mira", "player:ivan") or ()
        assert line.text == "x" * 20


async def test_append_sees_this_stores_unwritten_saves(kind: str, redis: RedisServer) -> None:
    """A save not yet written comes before an append made right after it."""
    async with opened(kind, redis) as store:
        store.save_nowait("mira", "player:jo", said("first"))
        assert await store.append("mira", "player:jo", said("second"), max_chars=100)
        assert [e.text for e in await store.load("mira", "player:jo") or ()] == ["first", "second"]


async def test_concurrent_appends_all_land(kind: str, redis: RedisServer) -> None:
    """Appends racing from two stores (two nodes) on one key lose no entry."""
    async with opened(kind, redis) as a, opened(kind, redis) as b:
        stores = [a, b] if kind == "redis" else [a, a]
        entries = [MemoryEntry("npc", "mira", f"seen {i}") for i in range(10)]
        results = await asyncio.gather(
            *(stores[i % 2].append("mira", "player:kim", [e], 1000) for i, e in enumerate(entries))
        )
        assert all(results)
        stored = await a.load("mira", "player:kim") or ()
        assert sorted(e.text for e in stored) == sorted(e.text for e in entries)


async def test_statistics_count_loads_and_saves(kind: str, redis: RedisServer) -> None:
    """`statistics()` counts what was asked and what was written."""
    async with opened(kind, redis) as store:
        store.save_nowait("mira", "player:lea", said("a"))
        store.save_nowait("mira", "player:lea", said("a", "b"))
        await store.flush()
        await store.load("mira", "player:lea")
        stats = store.statistics()
        assert (stats.loads, stats.saves, stats.pending, stats.failed) == (1, 2, 0, 0)
        assert stats.written >= 1


CAPPED: dict[str, Callable[[RedisServer, int], MemoryStore]] = {
    "local": lambda redis, rooms: LocalMemoryStore(TTL, max_room_entries=rooms),
    "redis": lambda redis, rooms: RedisMemoryStore(redis.url, TTL, max_room_memories=rooms),
}


async def test_room_memories_past_their_cap_push_out_rooms_never_players(kind: str) -> None:
    """Room names are the clients' choice: a client hopping through fresh rooms (here
    twelve, with room for three) pushes out the room memories saved longest ago, and a
    player's memory stays; appends count too. On Redis the older rooms' keys are gone."""
    with redis_server() as own:  # the Redis index of rooms is shared: a server of its own
        store = CAPPED[kind](own, 3)
        try:
            store.save_nowait("guard", ALICE, said("hello guard"))
            store.save_nowait("guard", "room:inn", said("in the inn"))
            for i in range(10):
                store.save_nowait("guard", f"room:hop-{i}", said(f"hop {i}"))
                await store.flush()
            assert await store.append("guard", "room:last", said("appended"), max_chars=100)
            await store.flush()
            assert await store.load("guard", ALICE) == said("hello guard")
            assert await store.load("guard", "room:inn") == ()
            kept = [f"room:hop-{i}" for i in (8, 9)]
            for i in range(8):
                assert await store.load("guard", f"room:hop-{i}") == ()
            for room in kept:
                assert await store.load("guard", room) != ()
            assert await store.load("guard", "room:last") == said("appended")
        finally:
            await store.aclose()
        if kind == "redis":
            raw = aioredis.from_url(own.url)
            try:
                keys = sorted(
                    k.decode() if isinstance(k, bytes) else k
                    for k in await raw.keys("npc:mem:guard:*")
                )
                assert keys == sorted(
                    ["npc:mem:guard:player:alice", "npc:mem:guard:room:last"]
                    + [f"npc:mem:guard:{room}" for room in kept]
                )
                assert 0 < await raw.pttl("npc:mem:rooms") <= TTL * 1000
            finally:
                await raw.aclose()
