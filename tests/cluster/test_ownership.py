"""One conversation, one node: requests reach the node that runs it, from any node.

Real parts: a redis-server and two or three npc-server processes on loopback,
driven by WebSocket clients. The scripted NPCs speak at 20 tokens a second, so
a turn is still generating when a request about it arrives from another node.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest

from npc_server.cluster.forward import owner_of
from tests.cluster.test_cluster import cluster_config, join, nodes, turn_text
from tests.support.client import Frame, RawClient, connect
from tests.support.redis import RedisServer, redis_server
from tests.support.server import ServerProcess, start_server_process
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


FOUR_SOCKETS = "max_sockets_per_player = 4\n"


def slow_config(tmp_path: Path, redis: RedisServer, tokens_per_second: int = 20) -> Path:
    """Demo NPCs at 20 tokens a second (a turn lasts seconds), four sockets a player."""
    return cluster_config(tmp_path, redis, tokens_per_second=tokens_per_second, limits=FOUR_SOCKETS)


def slow_nodes(tmp_path: Path, count: int) -> AbstractContextManager[list[ServerProcess]]:
    return nodes(tmp_path, count, tokens_per_second=20, limits=FOUR_SOCKETS)


@asynccontextmanager
async def alice_and_bob_in_the_inn(tmp_path: Path) -> AsyncIterator[tuple[RawClient, RawClient]]:
    """Two slow nodes; alice on A and bob on B, both members of the inn."""
    with slow_nodes(tmp_path, 2) as (a, b):
        async with connect(a.url) as alice, connect(b.url) as bob:
            await alice.hello(a.token("alice"))
            await bob.hello(b.token("bob"))
            await join(alice, "inn")
            await join(bob, "inn")
            yield alice, bob


async def say(client: RawClient, req: int, npc: str, text: str, room: str | None = None) -> Frame:
    """Send a say and return its answer (`ack` or `error`)."""
    frame: Frame = {"t": "say", "id": req, "npc": npc, "text": text}
    if room is not None:
        frame["room"] = room
    await client.send(frame)
    [*_, answer] = await client.recv_until(lambda f: f.get("id") == req)
    return answer


async def settle(client: RawClient, req: int) -> list[Frame]:
    """Everything the client gets up to the pong of a ping sent now (all that was queued)."""
    await client.send({"t": "ping", "id": req})
    return await client.recv_until(lambda f: f["t"] == "pong" and f.get("id") == req)


def starts_and_ends(frames: list[Frame]) -> list[tuple[str, str]]:
    return [(f["t"], f["turn"]) for f in frames if f["t"] in ("turn.start", "turn.end")]


def never_overlap(events: list[tuple[str, str]]) -> bool:
    """At most one turn is active at a time in this order of starts and ends."""
    active: str | None = None
    for kind, turn in events:
        if kind == "turn.start":
            if active is not None:
                return False
            active = turn
        elif turn == active:
            active = None
    return True


async def test_one_turn_per_npc_per_room_across_nodes_with_the_queue_policy(
    tmp_path: Path,
) -> None:
    """A say from node B to a room NPC talking on node A queues behind it there (merchant's
    busy = "queue"): one turn at a time for every member, both run by one node."""
    async with alice_and_bob_in_the_inn(tmp_path) as (alice, bob):
        first = await say(alice, 2, "merchant", "what are the prices?", room="inn")
        assert first["t"] == "ack" and first.get("queued") is None
        await bob.expect("delta")  # alice's turn is generating on her node
        second = await say(bob, 3, "merchant", "any rumours?", room="inn")
        assert second["t"] == "ack" and second["queued"] == 1
        assert owner_of(second["turn"]) == owner_of(first["turn"])
        frames = {}
        for name, client in (("alice", alice), ("bob", bob)):
            frames[name] = await client.recv_until(
                lambda f: f["t"] == "turn.end" and f["turn"] == second["turn"]
            )
        for got in frames.values():
            events = starts_and_ends(got)
            assert ("turn.start", second["turn"]) in events
            assert never_overlap(events)
        assert turn_text(frames["alice"], second["turn"]) == turn_text(
            frames["bob"], second["turn"]
        )


async def test_an_interrupt_on_node_b_stops_a_turn_on_node_a_at_once(tmp_path: Path) -> None:
    """The questgiver lets anyone interrupt: bob on B cuts alice's turn running on A, and no
    member on either node gets a delta of it after its turn.end."""
    async with alice_and_bob_in_the_inn(tmp_path) as (alice, bob):
        ack = await say(alice, 2, "questgiver", "any quests for me?", room="inn")
        turn = ack["turn"]
        await bob.expect("delta")
        await bob.send({"t": "interrupt", "id": 3, "turn": turn})
        *before, answer = await bob.recv_until(lambda f: f.get("id") == 3)
        assert answer["t"] == "ack"
        got_by = {
            "alice": await alice.recv_until(lambda f: f["t"] == "turn.end" and f["turn"] == turn),
            "bob": before
            + await bob.recv_until(lambda f: f["t"] == "turn.end" and f["turn"] == turn)
            if not any(f["t"] == "turn.end" for f in before)
            else before,
        }
        for (name, got), client, req in zip(got_by.items(), (alice, bob), (10, 11), strict=True):
            [end] = [f for f in got if f["t"] == "turn.end" and f["turn"] == turn]
            assert end["reason"] == "interrupted" and end["kept"] <= end["chars"], name
            after = await settle(client, req)
            assert not [f for f in after if f.get("turn") == turn]


async def test_only_the_speaker_may_interrupt_across_nodes(tmp_path: Path) -> None:
    """The guard lets only the speaker interrupt: bob on B is refused, as in one process."""
    async with alice_and_bob_in_the_inn(tmp_path) as (alice, bob):
        ack = await say(alice, 2, "guard", "open the gate", room="inn")
        await bob.expect("delta")
        await bob.send({"t": "interrupt", "id": 3, "turn": ack["turn"]})
        [*_, answer] = await bob.recv_until(lambda f: f.get("id") == 3)
        assert answer["t"] == "error" and answer["code"] == "forbidden"


async def test_a_player_on_two_nodes_has_one_turn_per_npc(tmp_path: Path) -> None:
    """Alice's second socket, on B, talks to the guard while he answers her first socket on
    A: the new say supersedes the old turn (busy = "interrupt"), on one node; a bare
    interrupt and `seen` from B reach it there."""
    with slow_nodes(tmp_path, 2) as (a, b):
        async with connect(a.url) as here, connect(b.url) as there:
            await here.hello(a.token("alice"))
            await there.hello(b.token("alice"))
            first = await say(here, 1, "guard", "open the gate")
            await there.expect("delta")  # her private turns reach both sockets
            second = await say(there, 2, "guard", "who are you?")
            assert second["t"] == "ack" and owner_of(second["turn"]) == owner_of(first["turn"])
            got = await there.recv_until(
                lambda f: f["t"] == "delta" and f["turn"] == second["turn"]
            )
            ends = [f for f in got if f["t"] == "turn.end" and f["turn"] == first["turn"]]
            assert ends and ends[0]["reason"] == "superseded"
            await there.send({"t": "seen", "id": 3, "turn": second["turn"], "shown": 1})
            [*_, seen] = await there.recv_until(lambda f: f.get("id") == 3)
            assert seen["t"] == "ack"
            await there.send({"t": "interrupt", "id": 4})
            # The owner ends the turn, then acks: the turn.end may come first.
            *before, cut = await there.recv_until(lambda f: f.get("id") == 4)
            assert cut["t"] == "ack"
            ended = await here.recv_until(
                lambda f: f["t"] == "turn.end" and f["turn"] == second["turn"]
            )
            if not any(f["t"] == "turn.end" for f in before):
                before += await there.recv_until(lambda f: f["t"] == "turn.end")
            for got in (ended, before):
                [end] = [f for f in got if f["t"] == "turn.end" and f["turn"] == second["turn"]]
                assert end["reason"] == "interrupted" and end["kept"] <= 1


async def test_an_action_is_answered_from_another_node(tmp_path: Path) -> None:
    """Mira asks approval to open her shop on node A; alice accepts from her socket on B."""
    with slow_nodes(tmp_path, 2) as (a, b):
        async with connect(a.url) as here, connect(b.url) as there:
            await here.hello(a.token("alice"))
            await there.hello(b.token("alice"))
            assert (await say(here, 1, "merchant", "show me your wares"))["t"] == "ack"
            action = await there.expect("action")
            assert action["approval"] is True
            await there.send({"t": "act", "id": 2, "action": action["action"], "accept": True})
            [*_, answer] = await there.recv_until(lambda f: f.get("id") == 2)
            assert answer["t"] == "ack"
            end = await here.expect("action.end")
            assert (end["action"], end["status"]) == (action["action"], "accepted")


async def test_a_bad_turn_id_from_another_node_is_refused_by_its_owner(tmp_path: Path) -> None:
    """An interrupt naming a turn id of node A that does not exist is answered, across
    nodes, with `unknown_turn`: forwarded requests are checked as local ones."""
    with slow_nodes(tmp_path, 2) as (a, b):
        async with connect(a.url) as alice, connect(b.url) as bob:
            welcome = await alice.hello(a.token("alice"))
            await bob.hello(b.token("bob"))
            fake = f"t-{welcome['server']['node']}-999999"
            await bob.send({"t": "interrupt", "id": 1, "turn": fake})
            [*_, answer] = await bob.recv_until(lambda f: f.get("id") == 1)
            assert answer["t"] == "error" and answer["code"] == "unknown_turn"


async def test_malformed_requests_from_another_node_are_dropped(tmp_path: Path) -> None:
    """Messages on a node's channel that do not fit (wrong types, a frame a client could not
    send, an unknown kind) are logged and dropped; the node goes on serving."""
    import redis.asyncio as aioredis

    from npc_server.brokers import wire

    with redis_server() as redis:
        config = slow_config(tmp_path, redis, tokens_per_second=200)
        node = start_server_process(env={"NPC_SERVER_CONFIG": str(config)})
        client = aioredis.Redis.from_url(redis.url)
        try:
            async with connect(node.url) as alice:
                welcome = await alice.hello(node.token("alice"))
                channel = f"npc:node:{welcome['server']['node']}"
                bad: list[dict[str, object]] = [
                    {"k": "say", "session": 5, "player": "alice", "rooms": [], "frame": {}},
                    {"k": "say", "session": "s", "player": "x", "rooms": [], "frame": {"t": "say"}},
                    {"k": "turn-request", "session": "s", "player": "x", "rooms": "inn"},
                    {"k": "turn.catch-up", "turn": 5, "channel": "room:inn"},
                    {"k": "turn.frames", "channel": "room:inn", "frames": [1, {"t": "x"}]},
                    {"k": "no-such-kind"},
                ]
                for number, message in enumerate(bad, 1):
                    data = wire.encode_message("evil", message, number)
                    assert await client.publish(channel, data) == 1  # the node got it
                assert await client.publish(channel, b"\xc1 not msgpack") == 1
                answer = await say(alice, 1, "guard", "open the gate")
                assert answer["t"] == "ack"
                assert (await alice.expect("turn.end"))["reason"] == "done"
            await wait_until(
                lambda: sum("dropped" in line for line in node.output) >= 7,
                what=f"seven messages dropped and logged: {node.output}",
            )
            async with httpx.AsyncClient() as http:
                health = (await http.get(f"{node.http_url}/healthz")).json()
            # The say, turn-request and turn catch-up ones (the others: the broker's count).
            assert health["cluster"]["routing"]["rejected"] >= 5
        finally:
            await client.aclose()
            assert node.terminate() == 0


def contiguous_text(frames: list[Frame], turn: str) -> str:
    """The turn's text from its deltas, asserting each starts where the last ended."""
    text = ""
    for frame in frames:
        if frame["t"] == "delta" and frame["turn"] == turn:
            assert frame["at"] == len(text), (frame, len(text))
            text += frame["text"]
    return text


async def test_a_join_catches_up_on_a_turn_running_on_another_node(tmp_path: Path) -> None:
    """Alice joins on B while the questgiver answers Carol on A: she gets the turn's start,
    its text so far at 0, then every later delta, each exactly once."""
    with slow_nodes(tmp_path, 2) as (a, b):
        async with connect(a.url) as carol, connect(b.url) as alice:
            await carol.hello(a.token("carol"))
            await alice.hello(b.token("alice"))
            await join(carol, "inn")
            turn = (await say(carol, 2, "questgiver", "any quests for me?", room="inn"))["turn"]
            for _ in range(3):
                await carol.expect("delta")
            await join(alice, "inn")
            got = await alice.recv_until(lambda f: f["t"] == "turn.end" and f["turn"] == turn)
            whole = await carol.recv_until(lambda f: f["t"] == "turn.end" and f["turn"] == turn)
            assert [f["turn"] for f in got if f["t"] == "turn.start"] == [turn]
            first = next(f for f in got if f["t"] == "delta")
            assert first["at"] == 0 and len(first["text"]) >= 3
            assert len(contiguous_text(got, turn)) == got[-1]["chars"] == whole[-1]["chars"]


async def test_a_new_socket_catches_up_on_a_private_turn_on_another_node(
    tmp_path: Path,
) -> None:
    """Alice's second socket, new on B, gets the guard's turn for her first socket on A:
    start, text so far, the rest, once."""
    with slow_nodes(tmp_path, 2) as (a, b):
        async with connect(a.url) as here:
            await here.hello(a.token("alice"))
            turn = (await say(here, 1, "guard", "open the gate"))["turn"]
            for _ in range(3):
                await here.expect("delta")
            async with connect(b.url) as there:
                await there.hello(b.token("alice"))
                got = await there.recv_until(lambda f: f["t"] == "turn.end" and f["turn"] == turn)
                assert [f["turn"] for f in got if f["t"] == "turn.start"] == [turn]
                assert len(contiguous_text(got, turn)) == got[-1]["chars"] > 0


SCOUT = """\
id = "scout"
name = "Scout"

[[tools]]
name = "inventory"
description = "what the player carries"
answered_by = "client"
timeout_s = 10

[backend]
kind = "scripted"
defaults = { item = "nothing" }
topics = [{ keywords = ["carry"], replies = ["Hm. [[inventory]] You carry {item}."] }]
"""


async def test_a_tool_call_is_answered_from_another_node(tmp_path: Path) -> None:
    """The scout asks the speaker's client; alice answers from her socket on B while the
    turn runs on A: the answer reaches A and the reply uses it."""
    npcs = tmp_path / "npcs"
    npcs.mkdir()
    (npcs / "scout.toml").write_text(SCOUT, encoding="utf-8")
    with nodes(tmp_path, 2, npcs_dir=npcs, limits=FOUR_SOCKETS) as (a, b):
        async with connect(a.url) as here, connect(b.url) as there:
            await here.hello(a.token("alice"))
            await there.hello(b.token("alice"))
            assert (await say(here, 1, "scout", "what do I carry?"))["t"] == "ack"
            call = await there.expect("tool")
            assert owner_of(call["call"]) == owner_of(call["turn"])
            result = {
                "t": "tool.result",
                "id": 2,
                "call": call["call"],
                "result": {"item": "a rope"},
            }
            await there.send(result)
            [*_, answer] = await there.recv_until(lambda f: f.get("id") == 2)
            assert answer["t"] == "ack"
            got = await here.recv_until(lambda f: f["t"] == "turn.end")
            assert "You carry a rope." in turn_text(got, call["turn"])
