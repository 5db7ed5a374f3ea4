"""Resume anywhere, drain and the socket cap across nodes: a real redis-server and real nodes."""

from __future__ import annotations

import asyncio
import signal
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import redis.asyncio as aioredis
from websockets.exceptions import ConnectionClosed

from npc_server.brokers import wire
from npc_server.cluster.handover import TIMEOUT
from npc_server.protocol.codes import CloseCode
from tests.cluster.test_cluster import (
    cluster_config,
    join,
    nodes_on_redis,
    turn_text,
    workers_serving,
)
from tests.support.client import Frame, RawClient, connect
from tests.support.redis import RedisServer, redis_server
from tests.support.server import ServerProcess, start_server_process

pytestmark = pytest.mark.e2e

# A turn long enough to cut: about 1200 characters at 100 tokens a second.
LONG = "long_reply_chars = 1200\n"


def write_config(tmp_path: Path, redis: RedisServer, limits: str = "", server: str = "") -> Path:
    return cluster_config(
        tmp_path, redis, tokens_per_second=100, scripted=LONG, limits=limits, server=server
    )


def cluster(
    tmp_path: Path, count: int, limits: str = "", server: str = ""
) -> AbstractContextManager[tuple[RedisServer, list[ServerProcess]]]:
    """`count` nodes on one redis-server, with extra `[limits]` / `[server]` lines."""
    return nodes_on_redis(
        tmp_path, count, tokens_per_second=100, scripted=LONG, limits=limits, server=server
    )


async def health(node: ServerProcess) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        body: dict[str, Any] = (await http.get(f"{node.http_url}/healthz")).json()
    return body


def drop(client: RawClient) -> None:
    """Cut the connection as a lost network does: no close frame."""
    transport = client.ws.transport
    assert transport is not None
    transport.abort()


async def start_long_turn(client: RawClient, room: str | None = None) -> tuple[str, list[Frame]]:
    """Say something to the guard; return the turn id and the frames up to a few deltas."""
    say: Frame = {"t": "say", "id": 9, "npc": "guard", "text": "open the gate"}
    if room is not None:
        say["room"] = room
    await client.send(say)
    frames = await client.recv_until(lambda f: f["t"] == "turn.start")
    turn = frames[-1]["turn"]
    frames += await client.recv_until(lambda f: f["t"] == "delta" and f["at"] > 100)
    return turn, frames


def resume_of(client: RawClient) -> dict[str, Any]:
    assert client.session is not None
    return {"session": client.session, "seq": client.last_seq}


async def test_resume_on_another_node_mid_turn(tmp_path: Path) -> None:
    """A socket dropped on A, resumed on B while A still generates: every delta once, gapless."""
    with cluster(tmp_path, 2) as (_, (a, b)):
        async with connect(a.url) as first:
            await first.hello(a.token("alice"))
            turn, before = await start_long_turn(first)
            drop(first)
        async with connect(b.url) as second:
            welcome = await second.hello(b.token("alice"), resume=resume_of(first))
            assert welcome["resumed"] is True and welcome["session"] == first.session
            assert welcome["server"]["node"] == (await health(b))["node"]
            after = await second.recv_until(lambda f: f["t"] == "turn.end")
            text = turn_text(before + after, turn)
            assert len(text) == after[-1]["chars"] > 1000 and after[-1]["reason"] == "done"
            assert not [f for f in after if f["t"] == "turn.start"]  # no snapshot on top
        assert (await health(a))["sessions"] == 0
        assert (await health(b))["cluster"]["handover"]["resumed"] == 1


async def test_frames_produced_while_away_arrive_once_on_the_new_node(tmp_path: Path) -> None:
    """Away from A, a room's talk and turn from C reach alice resumed on B, with no presence."""
    with cluster(tmp_path, 3) as (_, (a, b, c)):
        async with connect(c.url) as bob:
            await bob.hello(c.token("bob"))
            await join(bob, "inn")
            async with connect(a.url) as first:
                await first.hello(a.token("alice"))
                await join(first, "inn")
                await bob.expect("presence")
                drop(first)
            await bob.send(
                {"t": "say", "id": 2, "npc": "merchant", "text": "wares?", "room": "inn"}
            )
            bobs = await bob.recv_until(lambda f: f["t"] == "turn.end")
            async with connect(b.url) as second:
                welcome = await second.hello(b.token("alice"), resume=resume_of(first))
                assert welcome["resumed"] is True
                missed = await second.recv_until(lambda f: f["t"] == "turn.end")
                said = [f for f in missed if f["t"] == "said"]
                assert [(f["player"], f["text"]) for f in said] == [("bob", "wares?")]
                [start] = [f for f in missed if f["t"] == "turn.start"]
                assert turn_text(missed, start["turn"]) == turn_text(bobs, start["turn"])
                await bob.send({"t": "typing", "on": True, "room": "inn"})
                assert (await second.expect("typing"))["player"] == "bob"  # still in the room
            presence = [f for f in bob.received if f["t"] == "presence"]
            assert [(f["player"], f["state"]) for f in presence] == [("alice", "joined")]


async def test_a_window_that_no_longer_covers_the_client_is_a_snapshot(tmp_path: Path) -> None:
    """Resumed on B from a seq A's replay window has dropped: a new session and a snapshot."""
    with cluster(tmp_path, 2, limits="replay_frames = 2\n") as (_, (a, b)):
        async with connect(a.url) as first:
            await first.hello(a.token("alice"))
            for n in range(3):  # acks fill the two-frame window past seq 0
                await first.send({"t": "context", "id": 20 + n, "data": {"n": n}})
                assert (await first.expect("ack"))["id"] == 20 + n
            drop(first)
        async with connect(b.url) as second:
            welcome = await second.hello(
                b.token("alice"), resume={"session": first.session, "seq": 0}
            )
            assert welcome["resumed"] is False and welcome["session"] != first.session
            await second.send({"t": "say", "id": 1, "npc": "guard", "text": "hello"})
            assert (await second.expect("turn.end"))["reason"] == "done"
        assert (await health(b))["cluster"]["handover"]["snapshots"] == 1
        assert (await health(a))["sessions"] == 0  # the detached session ended there


async def test_a_killed_node_means_a_new_session_within_the_bound(tmp_path: Path) -> None:
    """A SIGKILLed mid-turn: a resume on B answers a new session within the handover bound."""
    with cluster(tmp_path, 2) as (_, (a, b)):
        async with connect(a.url) as first:
            await first.hello(a.token("alice"))
            await start_long_turn(first)
            a.kill()
        async with connect(b.url) as second:
            await second.send({"t": "hello", "token": b.token("alice"), "resume": resume_of(first)})
            welcome = await second.recv(timeout=TIMEOUT + 2.0)
            assert welcome["t"] == "welcome" and welcome["resumed"] is False
            second.last_seq = 0
            await second.send({"t": "say", "id": 1, "npc": "guard", "text": "hello"})
            assert (await second.expect("turn.end"))["reason"] == "done"


async def drained_mid_turn(tmp_path: Path, graceful_timeout: float) -> tuple[str, list[Frame]]:
    """Alice's long turn on A; SIGTERM on A; she resumes on B: the turn id and every frame
    of it she got on either node, up to its turn.end (A has exited cleanly by then)."""
    with cluster(tmp_path, 2, server=f"graceful_timeout = {graceful_timeout}\n") as (_, (a, b)):
        async with connect(a.url) as first:
            await first.hello(a.token("alice"))
            turn, frames = await start_long_turn(first)
            a.proc.send_signal(signal.SIGTERM)
            frames += await first.recv_until(lambda f: f["t"] == "draining")
            drop(first)
        async with connect(b.url) as second:
            welcome = await second.hello(b.token("alice"), resume=resume_of(first))
            assert welcome["resumed"] is True
            frames += await second.recv_until(lambda f: f["t"] == "turn.end")
        assert await asyncio.to_thread(a.wait, 30.0) == 0
    return turn, frames


async def test_a_drained_node_hands_its_players_over_and_finishes_its_turn(tmp_path: Path) -> None:
    """SIGTERM on A: alice gets draining, resumes on B, and A's turn reaches her there whole."""
    turn, frames = await drained_mid_turn(tmp_path, 20.0)
    end = frames[-1]
    assert len(turn_text(frames, turn)) == end["chars"] and end["reason"] == "done"


async def test_a_turn_longer_than_the_drain_ends_with_turn_end_on_the_new_node(
    tmp_path: Path,
) -> None:
    """Past graceful_timeout A ends its turn; the turn.end reaches alice on B after its text."""
    turn, frames = await drained_mid_turn(tmp_path, 1.0)
    end = frames[-1]
    assert end["turn"] == turn and end["reason"] == "interrupted"
    assert len(turn_text(frames, turn)) == end["chars"] < 1200


async def test_a_session_a_node_held_when_it_drained_resumes_from_redis(tmp_path: Path) -> None:
    """Away while A, the only node, drains and exits (no node to hand it to): alice
    resumes on B, started later, from the state A left in Redis."""
    with cluster(tmp_path, 1) as (redis, (a,)):
        async with connect(a.url) as first:
            await first.hello(a.token("alice"))
            await first.send({"t": "say", "id": 1, "npc": "guard", "text": "hello"})
            await first.recv_until(lambda f: f["t"] == "turn.start")
            drop(first)
        assert await asyncio.to_thread(a.terminate, signal.SIGTERM, 30.0) == 0
        b = start_server_process(env={"NPC_SERVER_CONFIG": str(write_config(tmp_path, redis))})
        try:
            await resume_parked(b, first)
        finally:
            b.kill()
        assert any("parked 1 sessions" in line for line in a.output)


async def resume_parked(b: ServerProcess, first: RawClient, player: str = "alice") -> None:
    async with connect(b.url) as second:
        welcome = await second.hello(b.token(player), resume=resume_of(first))
        assert welcome["resumed"] is True and welcome["session"] == first.session
        frames = await second.recv_until(lambda f: f["t"] == "turn.end")
        turn = frames[-1]["turn"]
        assert len(turn_text(first.received + frames, turn)) == frames[-1]["chars"]


async def test_a_drained_node_hands_an_away_session_to_a_live_node_which_keeps_its_frames(
    tmp_path: Path,
) -> None:
    """Away while A drains: A hands alice's session to B, so what bob says in their room
    after A exited is in alice's replay when she resumes (parked, it had no subscriber)."""
    with cluster(tmp_path, 2) as (_, (a, b)):
        async with connect(a.url) as first, connect(b.url) as bob:
            await first.hello(a.token("alice"))
            await bob.hello(b.token("bob"))
            await join(first, "inn")
            await join(bob, "inn")
            await first.recv_until(lambda f: f["t"] == "presence" and f["player"] == "bob")
            drop(first)
            assert await asyncio.to_thread(a.terminate, signal.SIGTERM, 30.0) == 0
            await adopted_on(b, 1)  # A sent the state before it exited; B installs it
            await bob.send(
                {"t": "say", "id": 2, "npc": "questgiver", "text": "any quests?", "room": "inn"}
            )
            await bob.recv_until(lambda f: f["t"] == "turn.end")
        async with connect(b.url) as second:
            welcome = await second.hello(b.token("alice"), resume=resume_of(first))
            assert welcome["resumed"] is True and welcome["session"] == first.session
            frames = await second.recv_until(lambda f: f["t"] == "turn.end")
        said = [f for f in frames if f["t"] == "said"]
        assert [(f["player"], f["text"]) for f in said] == [("bob", "any quests?")]
        seqs = [f["seq"] for f in frames if "seq" in f]
        assert seqs == list(range(first.last_seq + 1, first.last_seq + 1 + len(seqs)))
        assert any("handed 1 sessions to other nodes" in line for line in a.output)
        assert not any("parked" in line for line in a.output)


async def adopted_on(node: ServerProcess, count: int) -> None:
    """Until the node's /healthz counts `count` sessions taken from a draining node."""
    for _ in range(200):  # 10 s: polling the server's own report, with a deadline
        if (await health(node))["cluster"]["handover"]["adopted"] == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the node never counted {count} adopted sessions")


async def test_the_socket_cap_refuses_across_nodes(tmp_path: Path) -> None:
    """One socket per player: alice's second socket, on another node, is refused with 4513."""
    with cluster(tmp_path, 2, limits="max_sockets_per_player = 1\n") as (_, (a, b)):
        async with connect(a.url) as first, connect(b.url) as second:
            await first.hello(a.token("alice"))
            await second.send({"t": "hello", "token": b.token("alice")})
            assert await second.close_code() == CloseCode.TOO_MANY_CONNECTIONS
            await first.send({"t": "ping", "ts": 1, "id": 5})
            assert (await first.expect("pong"))["id"] == 5
        await wait_until_released(b, a, "alice")


async def wait_until_released(b: ServerProcess, a: ServerProcess, player: str) -> None:
    """Once A's socket has gone, a new socket on B is admitted (the claim was released)."""
    for _ in range(100):
        async with connect(b.url) as again:
            await again.send({"t": "hello", "token": b.token(player)})
            try:
                reply = await again.recv_until(lambda f: True)
            except ConnectionClosed as closed:  # refused (4513): not released yet
                code = closed.rcvd.code if closed.rcvd is not None else None
                if code != CloseCode.TOO_MANY_CONNECTIONS:
                    raise
            else:
                if reply[0]["t"] == "welcome":
                    return
        await asyncio.sleep(0.05)  # polling the server with a deadline, as wait_until does
    raise AssertionError("the claim of a closed socket was never released")


async def test_the_socket_cap_replaces_the_oldest_on_another_node(tmp_path: Path) -> None:
    """Policy replace: alice's new socket on B closes her oldest, on A, with 4503."""
    limits = 'max_sockets_per_player = 1\nsockets_policy = "replace"\n'
    with cluster(tmp_path, 2, limits=limits) as (_, (a, b)):
        async with connect(a.url) as first, connect(b.url) as second:
            await first.hello(a.token("alice"))
            await second.hello(b.token("alice"))
            assert await first.close_code() == CloseCode.REPLACED
            await second.send({"t": "say", "id": 1, "npc": "guard", "text": "hello"})
            assert (await second.expect("turn.end"))["reason"] == "done"
        stats = (await health(b))["cluster"]["sockets"]
        assert stats["replaced"] == 1


async def test_bad_handover_data_is_rejected_and_counted(tmp_path: Path) -> None:
    """A stray parked state and crafted messages: logged, counted, a snapshot, no crash."""
    with cluster(tmp_path, 2) as (redis, (a, b)):
        client = aioredis.Redis.from_url(redis.url)
        try:
            await client.set("npc:handover:s-forged-1", msgpack.packb({"seq": "x"}))
            async with connect(a.url) as alice:
                await alice.hello(a.token("alice"))
                ask = {"k": "handover.ask", "req": 5, "session": alice.session, "seq": "no"}
                await client.publish(
                    f"npc:session:{alice.session}", wire.encode_message("evil", ask, 1)
                )
                await client.publish(f"npc:session:{alice.session}", b"\x93truncated")
                forged = {"session": "s-forged-1", "seq": 0}
                async with connect(b.url) as mallory:
                    welcome = await mallory.hello(b.token("mallory"), resume=forged)
                    assert welcome["resumed"] is False
                await wait_until_counted(a, "rejected", 1)
                await alice.send({"t": "say", "id": 1, "npc": "guard", "text": "hello"})
                assert (await alice.expect("turn.end"))["reason"] == "done"
        finally:
            await client.aclose()
        assert (await health(b))["cluster"]["handover"]["rejected"] == 1
        assert any("rejected the parked state" in line for line in b.output)
        assert any("rejected an ask from node evil" in line for line in a.output)


async def wait_until_counted(node: ServerProcess, counter: str, value: int) -> None:
    for _ in range(200):
        if (await health(node))["cluster"]["handover"][counter] >= value:
            return
        await asyncio.sleep(0.05)  # polling the server's own report, with a deadline
    raise AssertionError(f"{counter} never reached {value}")


async def test_resumes_through_one_port_of_two_workers_always_resume(tmp_path: Path) -> None:
    """`--workers 2`: whichever worker the kernel picks, every resume continues the session."""
    with redis_server() as redis:
        config = write_config(tmp_path, redis)
        server = start_server_process(
            env={"NPC_SERVER_CONFIG": str(config)}, args=["--workers", "2"]
        )
        try:
            await workers_serving(server, 2)
            crossed = await resume_until_crossed(server)
            assert crossed, "the kernel never sent a resume to the other worker"
        finally:
            assert server.terminate() == 0


async def resume_until_crossed(server: ServerProcess, tries: int = 60) -> bool:
    """Drop and resume until one resume lands on another worker; each must resume."""
    async with connect(server.url) as client:
        welcome = await client.hello(server.token("alice"))
        node, seq, session = welcome["server"]["node"], client.last_seq, client.session
        drop(client)
    for n in range(tries):
        async with connect(server.url) as client:
            resume = {"session": session, "seq": seq}
            welcome = await client.hello(server.token("alice"), resume=resume)
            assert welcome["resumed"] is True and welcome["session"] == session
            await client.send({"t": "ping", "ts": n, "id": n + 1})
            await client.expect("pong")
            seq = client.last_seq
            drop(client)
        if welcome["server"]["node"] != node:
            return True
    return False


async def test_stopping_every_worker_parks_what_they_held_for_a_later_server(
    tmp_path: Path,
) -> None:
    """`--workers 2` stopped (both drain at once, as a container stop does), each holding
    a session away mid-turn: neither can take the other's, so both are parked, and a
    server started later resumes each."""
    with redis_server() as redis:
        config = write_config(tmp_path, redis)
        server = start_server_process(
            env={"NPC_SERVER_CONFIG": str(config)}, args=["--workers", "2"]
        )
        away: dict[str, tuple[str, RawClient]] = {}  # node -> a player who dropped there
        try:
            await workers_serving(server, 2)
            for n in range(60):
                async with connect(server.url) as client:
                    welcome = await client.hello(server.token(f"p{n}"))
                    if welcome["server"]["node"] in away:
                        continue
                    await client.send({"t": "say", "id": 1, "npc": "guard", "text": "hello"})
                    await client.recv_until(lambda f: f["t"] == "turn.start")
                    drop(client)
                    away[welcome["server"]["node"]] = (f"p{n}", client)
                if len(away) == 2:
                    break
            assert len(away) == 2, "the kernel never sent a player to the other worker"
        finally:
            assert await asyncio.to_thread(server.terminate, signal.SIGTERM, 30.0) == 0
        later = start_server_process(env={"NPC_SERVER_CONFIG": str(config)})
        try:
            for player, client in away.values():
                await resume_parked(later, client, player)
        finally:
            later.kill()
        assert sum("parked 1 sessions" in line for line in server.output) == 2
        # The first to ask was told by the other that it drains too (not left waiting).
        assert any("drains too" in line for line in server.output)
