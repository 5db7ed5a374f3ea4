"""Versions of trusted contexts at and past 2^53: exact, and bounded where 64 bits end
(nodes in this process, their parts in the cluster started, on a real redis-server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis

from npc_server.api import _context_everywhere
from npc_server.api_schema import ApiError
from npc_server.cluster.trusted import CLOCK_KEY, MAX_VERSION, versions_key
from tests.cluster.test_api_forwarded import answer_to, cluster, forger, started
from tests.support.redis import RedisServer

TWO_53 = 2**53


@asynccontextmanager
async def client_of(redis: RedisServer) -> AsyncIterator[Any]:
    client = aioredis.from_url(redis.url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_posts_go_on_rising_past_2_53(redis: RedisServer) -> None:
    """A clock in Redis just below 2^53 (a stray, or the year 2255): each post gets the
    next version, exactly (Lua's numbers are doubles: 2^53 + 1 is 2^53 there), and the
    node applies every one (a clock that went back to TIME left it on the first)."""
    async with client_of(redis) as client:
        await client.set(CLOCK_KEY, str(TWO_53 - 1))
        async with started(redis, "x") as (x,):
            for n, time in enumerate(("night", "day", "dusk")):
                await _context_everywhere(x, "player:alice", None, {"time": time})
                assert x.contexts.trusted.for_npc("alice", None, "merchant") == {"time": time}
                version = await client.hget(versions_key("player:alice"), "*")
                assert version == str(TWO_53 + n).encode()
            assert await client.get(CLOCK_KEY) == str(TWO_53 + 2).encode()
            assert cluster(x).statistics()["trusted_stale"] == 0


async def test_versions_past_2_53_from_redis_and_nodes_compare_exactly(
    redis: RedisServer,
) -> None:
    """A copy in Redis at 2^53 + 1 is applied; one a node sends at 2^53 (older by one,
    the same double) is stale; one at 2^53 + 2 is applied."""
    async with started(redis, "x") as (x,), forger(redis) as (client, pubsub):
        copies = cluster(x).trusted_copies
        await client.hset("npc:trusted:player:alice", "*", msgpack.packb({"time": "noon"}))
        await client.hset(versions_key("player:alice"), "*", str(TWO_53 + 1))
        await copies.load("player:alice")

        def alices() -> dict[str, Any]:
            return x.contexts.trusted.for_npc("alice", None, "merchant")

        assert alices() == {"time": "noon"}
        post = {"k": "api", "op": "context", "scope": "player:alice"}
        for number, (time, version) in enumerate((("day", TWO_53), ("dusk", TWO_53 + 2)), 1):
            message = {**post, "data": {"time": time}, "ask": number, "v": version}
            assert (await answer_to(client, pubsub, number, message))["result"] == {"ok": True}
        assert alices() == {"time": "dusk"} and copies.stale == 1


async def test_a_version_past_64_bits_is_refused_saying_the_bound(redis: RedisServer) -> None:
    """A node's copy with a version past 2^63 - 1 (no clock gives one): 400 naming the
    range, and the copy is not applied."""
    async with started(redis, "x") as (x,), forger(redis) as (client, pubsub):
        post = {"k": "api", "op": "context", "scope": "player:alice", "data": {"t": 1}}
        answer = await answer_to(client, pubsub, 1, {**post, "ask": 1, "v": MAX_VERSION + 1})
        assert answer["error"]["status"] == 400
        assert "from 1 to 9223372036854775807" in answer["error"]["message"]
        assert x.contexts.trusted.for_npc("alice", None, "merchant") == {}


@pytest.mark.server_errors("a clock at its end is logged as an error")
async def test_a_clock_at_its_end_refuses_posts_and_does_not_go_back(
    redis: RedisServer,
) -> None:
    """A clock at 2^63 - 1 cannot give a later version: the post is refused (503 naming
    the key) and nothing changes, in Redis or on the node, rather than versions starting
    again from TIME below the ones nodes hold (their copies would not change again)."""
    async with client_of(redis) as client, started(redis, "x") as (x,):
        await _context_everywhere(x, "player:alice", None, {"time": "night"})
        await client.set(CLOCK_KEY, str(MAX_VERSION))
        with pytest.raises(ApiError) as refused:
            await _context_everywhere(x, "player:alice", None, {"time": "day"})
        assert refused.value.status == 503 and CLOCK_KEY in refused.value.message
        assert refused.value.retry_after is not None and refused.value.retry_after >= 60
        assert x.contexts.trusted.for_npc("alice", None, "merchant") == {"time": "night"}
        assert await client.get(CLOCK_KEY) == str(MAX_VERSION).encode()
        raw = await client.hget("npc:trusted:player:alice", "*")
        assert msgpack.unpackb(raw) == {"time": "night"}
