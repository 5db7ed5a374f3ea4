"""Holes found when tried as an attacker: fair shares, resumes, interrupt targets, bounds."""

from __future__ import annotations

import pytest
import websockets

from npc_server.protocol.codes import CloseCode
from tests.support.client import Frame, RawClient, connect
from tests.support.server import RunningServer, running_server, server_config
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

LONG = {"tokens_per_second": 40, "long_reply_chars": 3000}


def say(npc: str, req: int, text: str = "tell me everything", **extra: object) -> Frame:
    return {"t": "say", "id": req, "npc": npc, "text": text, **extra}


async def answer(client: RawClient, req: int) -> Frame:
    """The ack or error answering request `req`."""
    frames = await client.recv_until(lambda f: f.get("id") == req and f["t"] in ("ack", "error"))
    return frames[-1]


async def test_a_player_past_the_turn_cap_gets_busy_with_retry_after() -> None:
    """Turns under way count per player over every NPC; past the cap a say is busy."""
    config = server_config(limits={"turns_per_player": 2}, scripted=LONG)
    async with running_server(config) as server, connect(server.url) as alice:
        await alice.hello(server.token("alice"))
        await alice.send(say("merchant", 1))
        assert (await answer(alice, 1))["t"] == "ack"
        await alice.send(say("questgiver", 2))
        assert (await answer(alice, 2))["t"] == "ack"
        await alice.send(say("guard", 3))
        refused = await answer(alice, 3)
        assert refused["t"] == "error" and refused["code"] == "busy"
        assert refused["retry_after"] > 0
        async with connect(server.url) as bob:  # a newcomer still gets a turn
            await bob.hello(server.token("bob"))
            await bob.send(say("guard", 1))
            assert (await answer(bob, 1))["t"] == "ack"


async def test_a_say_that_supersedes_the_players_own_turn_fits_the_cap() -> None:
    """At the cap, a say to an NPC that replaces the player's own reply is not refused."""
    config = server_config(limits={"turns_per_player": 1}, scripted=LONG)
    async with running_server(config) as server, connect(server.url) as alice:
        await alice.hello(server.token("alice"))
        await alice.send(say("guard", 1))
        assert (await answer(alice, 1))["t"] == "ack"
        await alice.send(say("guard", 2, "open the gate"))
        assert (await answer(alice, 2))["t"] == "ack"
        end = await alice.expect("turn.end")
        assert end["reason"] == "superseded"


async def test_a_spent_token_budget_refuses_the_next_say_until_it_refills() -> None:
    """With a budget of tokens a minute, a player who spent it gets busy and a retry_after."""
    config = server_config(limits={"tokens_per_minute_player": 6}, scripted={})
    async with running_server(config) as server, connect(server.url) as alice:
        await alice.hello(server.token("alice"))
        await alice.send(say("merchant", 1, "what wares do you sell?"))
        end = await alice.expect("turn.end")
        assert end["reason"] == "done" and end["chars"] > 0
        await alice.send(say("merchant", 2, "and what else?"))
        refused = await answer(alice, 2)
        assert refused["t"] == "error" and refused["code"] == "busy"
        assert refused["retry_after"] > 0 and "budget" in refused["message"]


async def test_a_refused_resume_leaves_the_live_socket_serving() -> None:
    """A resume with a seq the session never sent gets a new session; the live socket works."""
    async with running_server() as server, connect(server.url) as live:
        welcome = await live.hello(server.token("alice"))
        async with connect(server.url) as bad:
            resume = {"session": welcome["session"], "seq": 9999}
            other = await bad.hello(server.token("alice"), resume=resume)
            assert other["resumed"] is False and other["session"] != welcome["session"]
        await live.send({"t": "ping", "id": 7, "ts": 1})
        pong = await live.expect("pong")
        assert pong["id"] == 7
        await live.send(say("merchant", 8, "hello"))
        assert (await live.expect("turn.end"))["reason"] == "done"


async def test_a_session_ended_by_the_server_closes_its_socket() -> None:
    """No socket stays open and silent: ending an attached session closes it (1001)."""
    async with running_server() as server, connect(server.url) as alice:
        await alice.hello(server.token("alice"))
        [session] = server.node.hub.sessions_of("alice")
        server.node.end_session(session)
        assert await alice.close_code() == CloseCode.GOING_AWAY


async def in_the_inn(server: RunningServer, **players: RawClient) -> None:
    """Each client says hello as its player and joins room `inn`."""
    for name, client in players.items():
        await client.hello(server.token(name))
        await client.send({"t": "join", "id": 1, "room": "inn"})
        await client.expect("ack")


async def test_a_bare_interrupt_targets_the_players_own_newest_turn() -> None:
    """In a room, a bare interrupt cuts the speaker's own turn, never a newer one of another."""
    config = server_config(scripted=LONG)
    async with running_server(config) as server:
        async with connect(server.url) as alice, connect(server.url) as bob:
            await in_the_inn(server, alice=alice, bob=bob)
            await alice.send(say("questgiver", 2, room="inn"))
            mine = (await answer(alice, 2))["turn"]
            await bob.send(say("guard", 2, room="inn"))
            theirs = (await answer(bob, 2))["turn"]
            await wait_until(lambda: server.node.turns.count_started_by("bob") == 1)
            await alice.send({"t": "interrupt", "id": 3})
            frames = await alice.recv_until(lambda f: f.get("id") == 3)
            assert frames[-1]["t"] == "ack"
            ends = [(f["turn"], f["reason"]) for f in frames if f["t"] == "turn.end"]
            assert ends == [(mine, "interrupted")]
            entry = server.node.turns.get(theirs)
            assert entry is not None and entry[1].kept is None  # bob's turn runs on


async def test_a_bare_interrupt_without_an_own_turn_is_unknown_turn() -> None:
    """A bare interrupt with no turn of one's own under way is refused, cutting nothing."""
    config = server_config(scripted=LONG)
    async with running_server(config) as server:
        async with connect(server.url) as alice, connect(server.url) as bob:
            await in_the_inn(server, alice=alice, bob=bob)
            await bob.send(say("questgiver", 2, room="inn"))
            theirs = (await answer(bob, 2))["turn"]
            await alice.send({"t": "interrupt", "id": 3})
            refused = await answer(alice, 3)
            assert refused["t"] == "error" and refused["code"] == "unknown_turn"
            assert server.node.turns.get(theirs) is not None


async def test_typing_about_an_unknown_npc_is_refused() -> None:
    """`typing.npc` must name an NPC that exists, as `say.npc` must."""
    async with running_server() as server, connect(server.url) as alice:
        await alice.hello(server.token("alice"))
        await alice.send({"t": "join", "id": 1, "room": "inn"})
        await alice.expect("ack")
        await alice.send({"t": "typing", "id": 2, "on": True, "room": "inn", "npc": "nobody"})
        refused = await answer(alice, 2)
        assert refused["t"] == "error" and refused["code"] == "unknown_npc"


async def test_contexts_are_bounded_per_player_in_total() -> None:
    """Contexts for many NPCs may not add up past the per-player byte budget."""
    config = server_config(limits={"context_bytes_player": 3000})
    async with running_server(config) as server, connect(server.url) as alice:
        await alice.hello(server.token("alice"))
        blob = "x" * 1200
        codes = []
        for req, npc in enumerate(("merchant", "guard", "questgiver"), start=1):
            await alice.send({"t": "context", "id": req, "npc": npc, "data": {"notes": blob}})
            codes.append((await answer(alice, req)).get("code"))
        assert codes == [None, None, "too_long"]
        assert server.node.contexts.bytes_of("alice") < 3000


async def test_a_socket_opened_while_draining_is_told_to_go_elsewhere() -> None:
    """While the server drains, a new socket is accepted and closed at once with 1001."""
    async with running_server() as server:
        server.node.draining = True
        async with connect(server.url) as late:
            assert await late.close_code() == CloseCode.GOING_AWAY


async def test_a_websocket_on_another_path_is_refused_at_the_handshake() -> None:
    """Only /ws speaks the protocol: another path's handshake gets HTTP 403."""
    async with running_server() as server:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(f"ws://{server.host}:{server.port}/other"):
                pass
        assert refused.value.response.status_code == 403


async def test_a_context_with_bytes_keys_is_refused_and_the_player_talks_on() -> None:
    """A context whose nested map has a bytes key gets error{bad_frame}; nothing is
    stored, so the player's next turn runs (it failed with the generator's error)."""
    async with running_server() as server, connect(server.url) as client:
        await client.hello(server.token("alice"))
        await client.send({"t": "context", "id": 1, "data": {"bag": {b"key": 1, "coin": 2}}})
        error = await client.expect("error")
        assert (error["code"], error["id"]) == ("bad_frame", 1)
        assert server.node.contexts.for_npc("alice", "guard") == {}
        await client.send({"t": "say", "id": 2, "npc": "guard", "text": "hello"})
        ack = await client.expect("ack")
        end = await client.expect("turn.end")
        assert end["turn"] == ack["turn"] and end["reason"] == "done"


async def test_an_int_map_key_gets_bad_frame_with_the_id_and_the_player_talks_on() -> None:
    """A context with an int key (msgpack refuses those itself) is answered with the
    request's id and a message naming the frame, over a real socket; the socket stays."""
    async with running_server() as server, connect(server.url) as client:
        await client.hello(server.token("alice"))
        await client.send({"t": "context", "id": 15, "data": {1: 2}})
        error = await client.expect("error")
        assert (error["code"], error["id"]) == ("bad_frame", 15)
        assert error["message"] == "context: every map key must be a string, got int"
        await client.send({"t": "ping", "id": "p", "ts": 1})
        assert (await client.expect("pong"))["id"] == "p"
