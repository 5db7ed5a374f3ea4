"""A node that dies and a Redis that goes away: turns relayed elsewhere never hang.

Real parts: a redis-server and two npc-server processes on loopback. Alice is on
node B; Carol, on node A, talks to the room's NPC, so the turn runs on A and
reaches Alice through Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from npc_server.cluster.forward import owner_of
from npc_server.cluster.leases import CHECK_BOUND
from npc_server.memories import codec
from npc_server.memories.base import Lines
from npc_server.memories.redis import memory_key
from tests.cluster.test_cluster import join, wait_for_cluster
from tests.cluster.test_handover import drop, health
from tests.cluster.test_ownership import say, settle, slow_config
from tests.support.client import RawClient, connect
from tests.support.redis import RedisServer, redis_server
from tests.support.server import ServerProcess, start_server_process

pytestmark = pytest.mark.e2e


async def remembered(
    redis: RedisServer, npc: str, audience: str, done: Callable[[Lines], bool]
) -> Lines:
    """The NPC's memory of `audience` in Redis, once `done` holds for it (10 s at most)."""
    client = aioredis.Redis.from_url(redis.url)
    lines: Lines = ()
    try:
        for _ in range(200):  # polling Redis itself, with a deadline
            raw = await client.get(memory_key(npc, audience))
            lines = () if raw is None else codec.decode(raw)
            if done(lines):
                return lines
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    raise AssertionError(f"the memory of {npc} for {audience} never got there: {lines}")


@asynccontextmanager
async def a_room_across_two_nodes(
    tmp_path: Path,
) -> AsyncIterator[tuple[RedisServer, ServerProcess, ServerProcess, RawClient, RawClient]]:
    """Redis, nodes A and B, Carol on A and Alice on B, both in the inn."""
    with redis_server() as redis:
        config = slow_config(tmp_path, redis)
        a = start_server_process(env={"NPC_SERVER_CONFIG": str(config)})
        b = start_server_process(env={"NPC_SERVER_CONFIG": str(config)})
        try:
            async with connect(a.url) as carol, connect(b.url) as alice:
                await carol.hello(a.token("carol"))
                await alice.hello(b.token("alice"))
                await join(carol, "inn")
                await join(alice, "inn")
                yield redis, a, b, carol, alice
        finally:
            a.kill()
            b.kill()


async def test_a_killed_nodes_turn_ends_with_an_error_within_the_bound(tmp_path: Path) -> None:
    """SIGKILL of the node running a room turn: members on other nodes get
    turn.end{reason:"error"} within the lease bound, with what reached them as kept;
    the next say to that NPC runs on a live node."""
    async with a_room_across_two_nodes(tmp_path) as (redis, a, _b, carol, alice):
        ack = await say(carol, 2, "questgiver", "any quests for me?", room="inn")
        turn = ack["turn"]
        seen = await alice.recv_until(lambda f: f["t"] == "delta")
        a.kill()
        killed_at = time.monotonic()
        got = seen + await alice.recv_until(
            lambda f: f["t"] == "turn.end" and f["turn"] == turn, timeout=CHECK_BOUND + 5
        )
        waited = time.monotonic() - killed_at
        end = got[-1]
        text = "".join(f["text"] for f in got if f["t"] == "delta" and f["turn"] == turn)
        assert end["reason"] == "error" and end["kept"] == end["chars"] == len(text)
        assert waited <= CHECK_BOUND + 1.0, f"ended after {waited:.1f} s"
        lines = await remembered(redis, "questgiver", "room:inn", lambda lines: len(lines) >= 2)
        assert [(line.role, line.text) for line in lines[-2:]] == [
            ("player", "any quests for me?"),
            ("npc", text),
        ]
        retry = await say(alice, 3, "questgiver", "are you still there?", room="inn")
        assert retry["t"] == "ack" and owner_of(retry["turn"]) != owner_of(turn)
        done = await alice.recv_until(lambda f: f["t"] == "turn.end" and f["turn"] == retry["turn"])
        assert done[-1]["reason"] == "done"


async def test_a_redis_outage_ends_relayed_turns_and_serves_again_after(tmp_path: Path) -> None:
    """Redis stops mid-turn: Alice (on B) gets turn.end{error} instead of a gap, and none of
    that turn's frames after it; Carol on A, where the turn runs, gets all of it; nobody's
    socket closes; once Redis is back, both are told the room's talk may have a gap
    (`room.gap`), and a room say works across the nodes again."""
    async with a_room_across_two_nodes(tmp_path) as (redis, a, b, carol, alice):
        ack = await say(carol, 2, "questgiver", "any quests for me?", room="inn")
        turn = ack["turn"]
        await alice.expect("delta")
        redis.stop()
        got = await alice.recv_until(lambda f: f["t"] == "turn.end" and f["turn"] == turn)
        assert got[-1]["reason"] == "error"
        whole = await carol.recv_until(lambda f: f["t"] == "turn.end" and f["turn"] == turn)
        assert whole[-1]["reason"] == "done"
        refused = await say(alice, 4, "questgiver", "hello?", room="inn")  # a room needs Redis
        assert refused["code"] == "unavailable" and refused["retry_after"] > 0
        redis.start()
        await wait_for_cluster(a, available=True)
        await wait_for_cluster(b, available=True)
        after = await settle(alice, 9)
        assert not [f for f in after if f.get("turn") == turn]
        # once: B's own outage and A's report of what it lost meanwhile are one gap
        assert [f["room"] for f in after if f["t"] == "room.gap"] == ["inn"]
        told = await settle(carol, 11)
        assert [f["room"] for f in told if f["t"] == "room.gap"] == ["inn"]
        again = await say(alice, 3, "questgiver", "hello again", room="inn")
        assert again["t"] == "ack"
        for client in (alice, carol):
            frames = await client.recv_until(
                lambda f: f["t"] == "turn.end" and f["turn"] == again["turn"]
            )
            assert frames[-1]["reason"] == "done"
        assert (await settle(carol, 10))[-1]["t"] == "pong"


async def test_a_room_member_away_while_redis_was_away_resumes_with_a_snapshot(
    tmp_path: Path,
) -> None:
    """Alice (on B) is away while Redis is: room talk from A may be lost meanwhile, so her
    resume afterwards gets a new session and a snapshot, not a replay with a hole; Carol,
    connected throughout, goes on, told that the room's talk may have a gap."""
    async with a_room_across_two_nodes(tmp_path) as (redis, a, b, carol, alice):
        resume = {"session": alice.session, "seq": alice.last_seq}
        drop(alice)  # a lost network: the session waits for a resume
        redis.stop()
        await wait_for_cluster(b, available=False)
        redis.start()
        await wait_for_cluster(a, available=True)
        await wait_for_cluster(b, available=True)
        async with connect(b.url) as again:
            welcome = await again.hello(b.token("alice"), resume=resume)
            assert welcome["resumed"] is False and welcome["session"] != resume["session"]
        told = await settle(carol, 10)
        assert told[-1]["t"] == "pong"
        assert {f["room"] for f in told if f["t"] == "room.gap"} == {"inn"}


async def test_after_a_redis_restart_each_node_reclaims_its_lease_and_conversations(
    tmp_path: Path,
) -> None:
    """A Redis restarted without persistence forgets every key: each node writes its lease
    and the owner keys of the conversations it runs again as soon as it is back (so no
    other node takes them over or judges it dead), before any new say."""
    async with a_room_across_two_nodes(tmp_path) as (redis, a, _b, carol, _alice):
        ack = await say(carol, 2, "questgiver", "any quests for me?", room="inn")
        await carol.recv_until(lambda f: f["t"] == "turn.end" and f["turn"] == ack["turn"])
        node_a = (await health(a))["node"]
        key, lease = "npc:owner:questgiver:room:inn", f"npc:alive:{node_a}"
        client = aioredis.Redis.from_url(redis.url)
        try:
            assert await client.get(key) == node_a.encode()
            redis.stop()
            redis.start()
            await wait_for_cluster(a, available=True)
            await client.connection_pool.disconnect()  # its connection died with Redis
            for _ in range(200):  # 10 s: polling Redis with a deadline, as wait_until does
                if await client.get(key) == node_a.encode() and await client.exists(lease):
                    break
                await asyncio.sleep(0.05)
            assert await client.get(key) == node_a.encode() and await client.exists(lease)
        finally:
            await client.aclose()
