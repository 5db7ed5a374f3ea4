"""Bans shared in Redis (`npc_server/bans.py`) between two brokers on a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis

from npc_server.bans import KEY, Bans
from npc_server.brokers.redis import RedisBroker
from tests.support.redis import RedisServer
from tests.support.wait import wait_until


@asynccontextmanager
async def two_nodes(redis: RedisServer) -> AsyncIterator[tuple[Bans, Bans, list[RedisBroker]]]:
    brokers = [RedisBroker(redis.url, name) for name in ("node-a", "node-b")]
    for broker in brokers:
        await broker.start()
    try:
        yield Bans(broker=brokers[0]), Bans(broker=brokers[1]), brokers
    finally:
        for broker in brokers:
            await broker.aclose()


async def test_a_ban_made_on_one_node_is_found_by_a_node_that_never_heard_of_it(
    redis: RedisServer,
) -> None:
    async with two_nodes(redis) as (a, b, _):
        assert a.shared and b.shared
        await a.ban("alice", 60)
        assert b.remaining("alice") == 0  # b was not told
        left = await b.remaining_shared("alice")
        assert 59 < left <= 60
        assert b.remaining("alice") > 59  # and keeps it: Redis away, b still refuses
        assert await b.remaining_shared("bob") == 0
        client = aioredis.Redis.from_url(redis.url)
        try:
            assert 59_000 < await client.pttl(KEY + "alice") <= 60_000  # ends by itself
        finally:
            await client.aclose()


async def test_a_lift_on_one_node_ends_the_ban_that_another_node_still_holds(
    redis: RedisServer,
) -> None:
    async with two_nodes(redis) as (a, b, _):
        await a.ban("alice", 60)
        assert await b.lift("alice") is True  # in Redis; a's copy still runs
        assert a.remaining("alice") > 0
        assert await a.remaining_shared("alice") == 0  # Redis's word wins ...
        assert a.remaining("alice") == 0  # ... and a's copy follows
        assert await b.lift("alice") is False


async def test_a_key_that_is_no_ban_of_ours_bans_nobody(redis: RedisServer) -> None:
    """A stray key without a TTL (another program's, another version's) is not a ban."""
    async with two_nodes(redis) as (a, _, brokers):
        await brokers[0].client.hset(KEY + "alice", "x", "1")
        assert await a.remaining_shared("alice") == 0


async def test_with_redis_away_a_ban_is_refused_and_each_node_keeps_its_own_copy(
    redis: RedisServer,
) -> None:
    async with two_nodes(redis) as (a, b, brokers):
        await a.ban("alice", 60)
        redis.stop()
        await wait_until(lambda: not any(broker.available for broker in brokers), what="away")
        with pytest.raises(ConnectionError):
            await a.ban("bob", 60)  # other nodes would not find it: refused, not half made
        with pytest.raises(ConnectionError):
            await a.lift("alice")
        assert await a.remaining_shared("alice") > 59  # its own copy, at once
        assert await b.remaining_shared("alice") == 0  # never told, cannot ask: lets in
        redis.start()
        await wait_until(lambda: all(broker.available for broker in brokers), what="back")
