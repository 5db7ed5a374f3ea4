"""The cluster-wide socket cap against a real redis-server, on a fake wall clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis

from npc_server.brokers.redis import RedisBroker
from npc_server.cluster.leases import alive_key
from npc_server.cluster.sockets import KEY, LEASE, Claim, SocketClaims
from npc_server.node import Node
from npc_server.npcs import load_npcs
from tests.support.redis import RedisServer
from tests.support.server import DEMO_NPCS, server_config
from tests.support.wait import wait_until


class Wall:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def two_nodes(
    redis: RedisServer, wall: Wall, policy: str = "refuse"
) -> AsyncIterator[tuple[SocketClaims, SocketClaims]]:
    config = server_config(limits={"max_sockets_per_player": 1, "sockets_policy": policy})
    npcs = load_npcs(DEMO_NPCS)
    brokers = [RedisBroker(redis.url, name) for name in "ab"]
    nodes = [Node(config, npcs, broker=broker) for broker in brokers]
    for node, broker in zip(nodes, brokers, strict=True):
        await broker.start()
        # Each node's lease, as its Leases keep it while it runs (not started here).
        await broker.client.set(alive_key(node.node_id), b"1")
    try:
        yield SocketClaims(nodes[0], wall), SocketClaims(nodes[1], wall)
    finally:
        for node in nodes:
            await node.broker.aclose()


async def test_a_claim_over_the_cap_is_refused_until_the_dead_nodes_lease_lapses(
    redis: RedisServer,
) -> None:
    """A's claim counts on B while A's node lease lives; once it has lapsed (A died), B's
    claim is granted at once, long before A's claim itself would lapse."""
    async with two_nodes(redis, Wall()) as (a, b):
        assert await a.claim("alice", "s-a-1") is Claim.GRANTED
        assert await b.claim("alice", "s-b-1") is Claim.REFUSED
        await lease_lapsed(redis, a)
        assert await b.claim("alice", "s-b-1") is Claim.GRANTED
        assert b.statistics().refused == 1


async def test_an_unrenewed_claim_of_a_live_node_lapses_after_its_lease(
    redis: RedisServer,
) -> None:
    """A claim its live node never renewed (its release was lost) stops counting after
    LEASE on the wall clock."""
    wall = Wall()
    async with two_nodes(redis, wall) as (a, b):
        assert await a.claim("alice", "s-a-1") is Claim.GRANTED
        wall.now += LEASE - 1
        assert await b.claim("alice", "s-b-1") is Claim.REFUSED
        wall.now += 2
        assert await b.claim("alice", "s-b-1") is Claim.GRANTED


async def lease_lapsed(redis: RedisServer, claims: SocketClaims) -> None:
    client = aioredis.Redis.from_url(redis.url)
    try:
        assert await client.delete(alive_key(claims.node.node_id)) == 1
    finally:
        await client.aclose()


async def test_renewing_keeps_a_claim_and_a_release_only_drops_its_own(
    redis: RedisServer,
) -> None:
    """An attached session's claim is renewed; a release never drops another node's claim."""
    wall = Wall()
    async with two_nodes(redis, wall) as (a, b):
        session = a.node.open_session("alice")
        session.attach(object(), lambda: None, lambda code: None)
        assert await a.claim("alice", session.id) is Claim.GRANTED
        wall.now += LEASE - 1
        await a.renew()
        wall.now += 2  # past the first lease, within the renewed one
        assert await b.claim("alice", "s-b-1") is Claim.REFUSED
        client = aioredis.Redis.from_url(redis.url)
        try:
            await released(b, session.id)  # B never held it: nothing changes
            assert await client.hexists(KEY + "alice", session.id)
            await released(a, session.id)
            assert not await client.hexists(KEY + "alice", session.id)
        finally:
            await client.aclose()
        assert await b.claim("alice", "s-b-1") is Claim.GRANTED


async def released(claims: SocketClaims, session: str) -> None:
    task = claims.release_nowait("alice", session)
    assert task is not None
    await task


async def test_replace_names_the_oldest_and_closes_it_on_its_node(redis: RedisServer) -> None:
    """Policy replace: B's claim succeeds and A's oldest attached session gets REPLACED."""
    wall = Wall()
    async with two_nodes(redis, wall, policy="replace") as (a, b):
        session = a.node.open_session("alice")
        closes: list[int] = []
        session.attach(object(), lambda: None, closes.append)
        await a.node.broker.wait_subscribed()  # type: ignore[attr-defined]
        assert await a.claim("alice", session.id) is Claim.GRANTED
        wall.now += 1
        assert await b.claim("alice", "s-b-1") is Claim.GRANTED
        await wait_until(lambda: bool(closes), what="A closing its socket")
        assert closes == [4503] and b.statistics().replaced == 1


# Fields in `npc:sockets:alice` that no node wrote, and how many a claim replaces.
STRAY_FIELDS: dict[str, tuple[list[tuple[bytes | str, bytes | str]], int]] = {
    # A field that is not UTF-8 naming a live node (replaced: a `sockets.replace` for a
    # session no node has), and values that do not parse (dropped).
    "not UTF-8, or no claim": (
        [(b"\xff\xfe-not-utf8", "{node} 1 {soon}"), ("s-junk", "not a claim"), (b"\x00", b"\x80")],
        1,
    ),
    # An empty or spaced session name (the replace's answer could not name it), a lapse
    # far past any lease (it would count forever): dropped, neither filling the cap
    # nor breaking the script.
    "no node could have made": (
        [("", "{node} 1 {soon}"), ("s with space", "{node} 1 {soon}"), ("s-x", "{node} 1 {far}")],
        0,
    ),
}


@pytest.mark.parametrize("case", sorted(STRAY_FIELDS))
async def test_stray_claims_in_redis_never_break_a_claim(redis: RedisServer, case: str) -> None:
    """A claim under policy replace with stray fields beside it: granted, counted across
    the cluster, and only its own field is left."""
    fields, replaced = STRAY_FIELDS[case]
    wall = Wall()
    async with two_nodes(redis, wall, policy="replace") as (a, _):
        key = KEY + "alice"
        soon = int((wall.now + LEASE) * 1000)
        client = aioredis.Redis.from_url(redis.url)
        try:
            for name, value in fields:
                if isinstance(value, str):
                    value = value.format(node=a.node.node_id, soon=soon, far=soon * 10)
                await client.hset(key, name, value)
            assert await a.claim("alice", "s-a-1") is Claim.GRANTED
            assert a.statistics().replaced == replaced and a.statistics().local == 0
            assert await client.hkeys(key) == [b"s-a-1"]
        finally:
            await client.aclose()


async def test_a_stray_key_where_the_claims_go_is_replaced(redis: RedisServer) -> None:
    """`npc:sockets:alice` is a string (another program's, another version's): the claim
    replaces it and the cap counts across the cluster again, not on each node alone."""
    wall = Wall()
    async with two_nodes(redis, wall) as (a, b):
        client = aioredis.Redis.from_url(redis.url)
        try:
            await client.set(KEY + "alice", b"stray")
            assert await a.claim("alice", "s-a-1") is Claim.GRANTED
            assert await client.type(KEY + "alice") == b"hash"
        finally:
            await client.aclose()
        assert await b.claim("alice", "s-b-1") is Claim.REFUSED  # the cap of 1, cluster-wide
        assert a.statistics().local == 0
