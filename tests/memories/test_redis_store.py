"""The Redis memory store on a real redis-server: its key, TTL, foreign values, Redis away."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import msgpack
import pytest
import redis.asyncio as aioredis

from npc_server.backends.base import MemoryEntry
from npc_server.memories import codec
from npc_server.memories.redis import RedisMemoryStore, memory_key
from tests.memories.test_store import said
from tests.support.alloc import length_claims, peak_allocation
from tests.support.redis import RedisServer
from tests.support.wait import wait_until

TTL = 3600.0
WAIT = 10.0


@pytest.fixture
async def raw(redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def store(redis: RedisServer) -> AsyncIterator[RedisMemoryStore]:
    made = RedisMemoryStore(redis.url, TTL)
    try:
        yield made
    finally:
        await made.aclose()


async def test_one_key_per_npc_and_audience_with_the_ttl(
    store: RedisMemoryStore, raw: aioredis.Redis
) -> None:
    """A save is `npc:mem:<npc>:<audience>`, a versioned msgpack value, expiring ttl after it."""
    store.save_nowait("mira", "player:alice", said("hello", "Hi"))
    await store.flush()
    key = "npc:mem:mira:player:alice"
    assert memory_key("mira", "player:alice") == key
    value = await raw.get(key)
    assert msgpack.unpackb(value) == [1, [["player", "alice", "hello"], ["npc", "mira", "Hi"]]]
    assert TTL * 1000 - 5000 < await raw.pttl(key) <= TTL * 1000


async def test_each_save_renews_the_ttl(store: RedisMemoryStore, raw: aioredis.Redis) -> None:
    """The memory lives ttl after the last turn, not the first."""
    key = memory_key("mira", "player:alice")
    store.save_nowait("mira", "player:alice", said("one"))
    await store.flush()
    await raw.pexpire(key, 1000)  # as if almost all of the ttl had passed
    store.save_nowait("mira", "player:alice", said("one", "two"))
    await store.flush()
    assert await raw.pttl(key) > TTL * 1000 - 5000


@pytest.mark.parametrize(
    "value",
    [
        b"\xff\x00garbage",
        msgpack.packb([2, [["player", "alice", "from a newer server"]]]),
        codec.encode(said("hello", "a line cut short"))[:-5],
        msgpack.packb([1, [["player", "alice"]]]),
        msgpack.packb([1, [["wizard", "alice", "unknown role"]]]),
        msgpack.packb({"lines": []}),
    ],
    ids=["garbage", "other-version", "truncated", "short-line", "unknown-role", "a-map"],
)
async def test_a_value_that_is_not_ours_reads_as_empty(
    store: RedisMemoryStore, raw: aioredis.Redis, value: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Another version, a truncated value or garbage: empty memory, one warning, then replaced."""
    key = memory_key("mira", "player:alice")
    await raw.set(key, value)
    with caplog.at_level(logging.WARNING, "npc_server.memories.redis"):
        assert await store.load("mira", "player:alice") == ()
        assert await store.load("mira", "player:alice") == ()
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert key in warning.message and "read as empty" in warning.message
    assert store.statistics().rejected == 2
    store.save_nowait("mira", "player:alice", said("fresh"))
    await store.flush()
    assert codec.decode(await raw.get(key)) == said("fresh")


async def test_a_key_of_another_type_reads_as_empty_and_is_replaced(
    store: RedisMemoryStore, raw: aioredis.Redis
) -> None:
    """A list where the memory should be: WRONGTYPE is an empty memory, not an error."""
    key = memory_key("mira", "player:alice")
    await raw.rpush(key, "stray")
    assert await store.load("mira", "player:alice") == ()
    assert await store.append("mira", "player:alice", said("seen"), max_chars=100)
    assert codec.decode(await raw.get(key)) == said("seen")


async def test_redis_away_load_answers_none_and_saves_wait_for_it(
    redis: RedisServer, store: RedisMemoryStore, raw: aioredis.Redis
) -> None:
    """Redis stopped: a load says unavailable (None) at once; a save is written once it is back."""
    await store.load("mira", "player:alice")  # connected
    redis.stop()
    async with asyncio.timeout(store.timeout + 1):
        assert await store.load("mira", "player:bob") is None
    store.save_nowait("mira", "player:bob", said("while away"))
    await wait_until(lambda: store.statistics().failed >= 2, WAIT, "the write to fail")
    assert await store.append("mira", "player:bob", said("x"), 100) is False
    redis.start()
    await wait_until(lambda: store.statistics().pending == 0, WAIT, "the write after Redis is back")
    assert codec.decode(await raw.get(memory_key("mira", "player:bob"))) == said("while away")
    assert await store.load("mira", "player:bob") == said("while away")


async def test_a_failed_write_does_not_replace_a_newer_save(
    redis: RedisServer, store: RedisMemoryStore, raw: aioredis.Redis
) -> None:
    """Of a save that failed and one made after it, the newer is written."""
    await store.load("mira", "player:alice")
    redis.stop()
    store.save_nowait("mira", "player:alice", said("old"))
    await wait_until(lambda: store.statistics().failed >= 1, WAIT, "the write to fail")
    store.save_nowait("mira", "player:alice", said("old", "new"))
    redis.start()
    await wait_until(lambda: store.statistics().pending == 0, WAIT, "the write")
    assert codec.decode(await raw.get(memory_key("mira", "player:alice"))) == said("old", "new")


async def test_saves_of_one_iteration_are_one_batch(
    store: RedisMemoryStore, raw: aioredis.Redis
) -> None:
    """Saves of 50 keys made in one loop iteration are written together, all of them."""
    for i in range(50):
        store.save_nowait("mira", f"player:p{i}", said(f"hi {i}"))
    assert store.statistics().pending == 50
    await store.flush()
    assert store.statistics().written == 50
    assert len(await raw.keys("npc:mem:mira:player:p*")) == 50


async def test_saves_of_a_busy_node_share_a_write(
    store: RedisMemoryStore, raw: aioredis.Redis
) -> None:
    """A save after a quiet spell is written at once; saves in the loop iterations that
    follow, within WRITE_EVERY, wait and go in one more pipeline."""
    for i in range(30):
        store.save_nowait("mira", f"player:p{i}", said(f"hi {i}"))
        await asyncio.sleep(0)  # each save in its own loop iteration
    await store.flush()
    stats = store.statistics()
    assert stats.written == 30 and stats.writes == 2
    assert len(await raw.keys("npc:mem:mira:player:p*")) == 30


def test_tool_lines_keep_call_and_args() -> None:
    """The codec round-trips every field of a line; text-only lines stay three fields."""
    lines = (MemoryEntry("tool", "dice", "4", "c-9", '{"sides":6}'), *said("roll"))
    assert codec.decode(codec.encode(lines)) == lines
    assert msgpack.unpackb(codec.encode(said("roll")))[1] == [["player", "alice", "roll"]]


async def test_a_memory_of_nested_length_claims_is_refused_in_bounded_memory(
    store: RedisMemoryStore, raw: aioredis.Redis
) -> None:
    """Bytes that claim more than they hold (scanned first, as a client's frame is):
    an empty memory, decided without allocating what they claim."""
    await raw.set(memory_key("mira", "player:alice"), length_claims(1000))
    with peak_allocation() as peak:
        assert await store.load("mira", "player:alice") == ()
    assert peak.bytes < 2_000_000


async def test_a_stray_key_at_the_room_index_is_replaced(
    redis: RedisServer, raw: aioredis.Redis
) -> None:
    """Another type at `npc:mem:rooms` (another version, a stray key) never stops the
    writes: the index is made again, and the cap holds from there."""
    store = RedisMemoryStore(redis.url, TTL, max_room_memories=1)
    try:
        await raw.set("npc:mem:rooms", b"stray")
        store.save_nowait("guard", "room:a", said("a"))
        await store.flush()
        store.save_nowait("guard", "room:b", said("b"))
        await store.flush()
        assert store.statistics().failed == 0
        assert await store.load("guard", "room:a") == ()
        assert await store.load("guard", "room:b") == said("b")
        assert await raw.type("npc:mem:rooms") == b"zset"
    finally:
        await store.aclose()
