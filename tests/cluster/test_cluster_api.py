"""The game server's kick, listings and trusted context across nodes (real redis-server,
npc-server processes on loopback, WebSocket clients, the API over HTTP)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from npc_server.cluster.forward import owner_of
from npc_server.protocol.codes import CloseCode
from tests.cluster.test_cluster import cluster_config, join, turn_text
from tests.cluster.test_handover import drop, health, resume_of
from tests.cluster.test_ownership import say
from tests.support.client import connect, refused_hello
from tests.support.redis import RedisServer, redis_server
from tests.support.server import ServerProcess, start_server_process

pytestmark = pytest.mark.e2e

API_KEY = "k" * 40
AUTH = {"Authorization": f"Bearer {API_KEY}"}
NIGHT = ("Stall's shut", "At this hour?")  # the demo merchant's lines when the time is night


def api_node(config: Path) -> ServerProcess:
    return start_server_process(
        env={"NPC_SERVER_CONFIG": str(config), "NPC_SERVER_API_KEY": API_KEY}
    )


async def a_ghost_node(redis: RedisServer) -> None:
    """A node in the directory with a lease, that never answers (a node that hangs)."""
    client = aioredis.from_url(redis.url)
    try:
        seconds, micros = await client.time()
        await client.zadd("npc:nodes", {"ghost": seconds * 1000 + micros // 1000})
        await client.set("npc:alive:ghost", b"1", px=60_000)
    finally:
        await client.aclose()


async def test_a_kick_sent_to_one_node_closes_sockets_on_every_node(tmp_path: Path) -> None:
    """POST /api/kick to node A closes alice's sockets on A and on B with 4508 and counts
    both; bob, on B, stays connected."""
    with redis_server() as redis:
        config = cluster_config(tmp_path, redis, limits="max_sockets_per_player = 4\n")
        a, b = api_node(config), api_node(config)
        try:
            async with (
                connect(a.url) as on_a,
                connect(b.url) as on_b,
                connect(b.url) as bob,
                httpx.AsyncClient(base_url=a.http_url) as game,
            ):
                await on_a.hello(a.token("alice"))
                await on_b.hello(b.token("alice"))
                await bob.hello(b.token("bob"))
                answer = await game.post("/api/kick", json={"player": "alice"}, headers=AUTH)
                assert answer.status_code == 200, answer.text
                assert answer.json() == {"player": "alice", "sessions": 2, "sockets": 2}
                assert await on_b.close_code() == 4508 == int(CloseCode.KICKED)
                assert await on_a.close_code() == CloseCode.KICKED
                await bob.send({"t": "ping", "id": 1})
                assert (await bob.expect("pong"))["id"] == 1
                alice = (await game.get("/api/players/alice", headers=AUTH)).json()
                assert alice["sessions"] == [] and alice["online"] is False
        finally:
            a.kill()
            b.kill()


async def test_a_ban_sent_to_one_node_holds_on_every_node_and_one_started_after(
    tmp_path: Path,
) -> None:
    """Kicked with a ban through A, alice is refused 4508 by B and by C, started after the
    ban (it finds it in Redis); lifted through C, A and B let her in."""
    with redis_server() as redis:
        config = cluster_config(tmp_path, redis)
        a, b = api_node(config), api_node(config)
        c: ServerProcess | None = None
        try:
            async with connect(a.url) as alice, httpx.AsyncClient(base_url=a.http_url) as game:
                token = a.token("alice")
                await alice.hello(token)
                kick = {"player": "alice", "ban": 300}
                answer = await game.post("/api/kick", json=kick, headers=AUTH)
                assert answer.status_code == 200, answer.text
                assert answer.json() == {
                    "player": "alice",
                    "sessions": 1,
                    "sockets": 1,
                    "banned_for": 300,
                }
                assert await alice.close_code() == CloseCode.KICKED
            assert (await refused_hello(b.url, token)).startswith("banned for ")
            c = api_node(config)
            assert (await refused_hello(c.url, token)).startswith("banned for ")
            async with httpx.AsyncClient(base_url=c.http_url) as game:
                info = (await game.get("/api/players/alice", headers=AUTH)).json()
                assert 290 <= info["banned_for"] <= 300
                lift = await game.post("/api/unban", json={"player": "alice"}, headers=AUTH)
                assert lift.json() == {"player": "alice", "lifted": True}
            for node in (a, b):
                async with connect(node.url) as back:
                    assert (await back.hello(token))["resumed"] is False
        finally:
            for started in (a, b, c):
                if started is not None:
                    started.kill()


async def test_a_node_told_of_a_ban_keeps_it_while_redis_is_away(tmp_path: Path) -> None:
    """B heard of alice's ban with the kick sent to A; with Redis stopped, B cannot ask it
    and refuses her from its own copy, while it still welcomes bob."""
    with redis_server() as redis:
        config = cluster_config(tmp_path, redis)
        a, b = api_node(config), api_node(config)
        try:
            async with httpx.AsyncClient(base_url=a.http_url) as game:
                kick = {"player": "alice", "ban": 300}
                answer = await game.post("/api/kick", json=kick, headers=AUTH)
                assert answer.status_code == 200, answer.text
                assert answer.json()["banned_for"] == 300 and "partial" not in answer.json()
            redis.stop()
            assert (await refused_hello(b.url, b.token("alice"))).startswith("banned for ")
            async with connect(b.url) as bob:
                assert (await bob.hello(b.token("bob")))["t"] == "welcome"
        finally:
            a.kill()
            b.kill()


async def test_a_kick_drops_the_sessions_a_drained_node_parked(tmp_path: Path) -> None:
    """Alice is away when A, the only node, drains and parks her session in Redis; B,
    started after, lists it (parked, on no node); a kick sent to B counts it and drops
    it: her resume gets a new session."""
    with redis_server() as redis:
        config = cluster_config(tmp_path, redis)
        a = api_node(config)
        try:
            async with connect(a.url) as first:
                await first.hello(a.token("alice"))
                await join(first, "inn")
                drop(first)
            assert await asyncio.to_thread(a.terminate, signal.SIGTERM, 30.0) == 0
            assert any("parked 1 sessions" in line for line in a.output)
        finally:
            a.kill()
        b = api_node(config)
        try:
            async with httpx.AsyncClient(base_url=b.http_url) as game:
                info = (await game.get("/api/players/alice", headers=AUTH)).json()
                assert info["online"] is False
                [parked] = info["sessions"]
                assert parked["session"] == first.session and parked["state"] == "parked"
                assert parked["node"] is None and parked["last_seq"] > 0
                event = {"npc": "guard", "player": "alice", "event": "bell_rings"}
                say = await game.post("/api/say", json=event, headers=AUTH)
                assert say.status_code == 200, say.text  # a parked session is held for her
                answer = await game.post("/api/kick", json={"player": "alice"}, headers=AUTH)
                assert answer.json() == {"player": "alice", "sessions": 1, "sockets": 0}
                again = await game.post("/api/kick", json={"player": "alice"}, headers=AUTH)
                assert again.json()["sessions"] == 0
                after = (await game.get("/api/players/alice", headers=AUTH)).json()
                assert after["sessions"] == []
                say = await game.post("/api/say", json=event, headers=AUTH)
                assert say.status_code == 409 and say.json()["error"]["code"] == "not_connected"
            async with connect(b.url) as second:
                welcome = await second.hello(b.token("alice"), resume=resume_of(first))
                assert welcome["resumed"] is False and welcome["session"] != first.session
        finally:
            b.kill()


async def test_listings_from_one_node_show_every_node(tmp_path: Path) -> None:
    """Node A lists the inn's members on A and B and bob's session on B (naming B); with a
    node that does not answer, A answers what came and names the missing node; without
    Redis, 503 `unavailable` with retry_after (a listing, a kick, a ban that kicks
    nobody, and an unban)."""
    with redis_server() as redis:
        config = cluster_config(tmp_path, redis)
        a, b = api_node(config), api_node(config)
        try:
            async with (
                connect(a.url) as alice,
                connect(b.url) as bob,
                httpx.AsyncClient(base_url=a.http_url) as game,
            ):
                await alice.hello(a.token("alice"))
                node_b = (await bob.hello(b.token("bob")))["server"]["node"]
                await join(alice, "inn")
                await join(bob, "inn")
                inn = (await game.get("/api/rooms/inn", headers=AUTH)).json()
                assert inn == {"room": "inn", "members": ["alice", "bob"]}
                info = (await game.get("/api/players/bob", headers=AUTH)).json()
                assert info["online"] is True and info["rooms"] == ["inn"]
                [session] = info["sessions"]
                assert (session["session"], session["node"]) == (bob.session, node_b)
                assert session["state"] == "attached"
                missing = await game.get("/api/rooms/cellar", headers=AUTH)
                assert missing.status_code == 404
                assert missing.json()["error"]["code"] == "unknown_room"

                await a_ghost_node(redis)
                partial = (await game.get("/api/rooms/inn", headers=AUTH)).json()
                assert partial["members"] == ["alice", "bob"]
                assert partial["partial"] is True and partial["nodes_missing"] == ["ghost"]

                redis.stop()
                away = await game.get("/api/players/bob", headers=AUTH)
                assert away.status_code == 503 and away.headers["retry-after"] == "1"
                error = away.json()["error"]
                assert error["code"] == "unavailable" and error["retry_after"] == 1.0
                kick = await game.post("/api/kick", json={"player": "bob"}, headers=AUTH)
                assert kick.status_code == 503  # parked sessions cannot be dropped: retry
                assert kick.json()["error"]["code"] == "unavailable"
                ban = {"player": "alice", "ban": 60}
                banned = await game.post("/api/kick", json=ban, headers=AUTH)
                assert banned.status_code == 503  # a ban other nodes would not find: none
                assert banned.json()["error"]["code"] == "unavailable"
                lift = await game.post("/api/unban", json={"player": "alice"}, headers=AUTH)
                assert lift.status_code == 503
                await alice.send({"t": "ping", "id": 7})  # and alice was not kicked
                assert (await alice.expect("pong"))["id"] == 7
        finally:
            a.kill()
            b.kill()


async def test_a_context_posted_to_one_node_is_used_on_others(tmp_path: Path) -> None:
    """Game state posted to node A is in the prompt of alice's turn on node B (which runs
    it), and, after her socket dropped, on node C, started after the post, where she
    resumes her session (a handover)."""
    with redis_server() as redis:
        config = cluster_config(tmp_path, redis)
        a, b = api_node(config), api_node(config)
        c: ServerProcess | None = None
        try:
            async with (
                connect(b.url) as alice,
                httpx.AsyncClient(base_url=a.http_url) as game,
            ):
                node_b = (await alice.hello(b.token("alice")))["server"]["node"]
                body = {"player": "alice", "npc": "merchant", "data": {"time": "night"}}
                answer = await game.post("/api/context", json=body, headers=AUTH)
                assert answer.status_code == 200, answer.text
                assert answer.json() == {"ok": True, "scope": "player:alice", "npc": "merchant"}
                ack = await say(alice, 2, "merchant", "what do you sell?")
                frames = await alice.recv_until(lambda f: f["t"] == "turn.end")
                assert any(line in turn_text(frames, ack["turn"]) for line in NIGHT), frames
                assert owner_of(ack["turn"]) == node_b  # run by B, which did not get the post
                drop(alice)
            c = api_node(config)
            async with connect(c.url) as again:
                welcome = await again.hello(c.token("alice"), resume=resume_of(alice))
                assert welcome["resumed"] is True and welcome["session"] == alice.session
                ack = await say(again, 3, "merchant", "what do you sell?")
                frames = await again.recv_until(lambda f: f["t"] == "turn.end")
                # B still runs the conversation: C sends its own copy of the context with
                # the say, as it would run the turn with it.
                assert any(line in turn_text(frames, ack["turn"]) for line in NIGHT), frames
            async with httpx.AsyncClient(base_url=c.http_url) as game:
                big = {"player": "alice", "data": {"x": "y" * 70_000}}
                refused = await game.post("/api/context", json=big, headers=AUTH)
                assert refused.status_code == 413, refused.text
                routing = (await health(a))["cluster"]["routing"]
                assert (routing["trusted_rejected"], routing["trusted_stale"]) == (0, 0)
        finally:
            for started in (a, b, c):
                if started is not None:
                    started.kill()
