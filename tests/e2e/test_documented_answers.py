"""Behaviours docs/protocol.md states about answers and order, over a real socket: where
acks go, `typing` without a room, `action.end` against `turn.end`, `delta_ms` on resume."""

from __future__ import annotations

import pytest

from tests.support.client import connect
from tests.support.server import running_server, server_config

pytestmark = pytest.mark.e2e


async def test_acks_go_to_the_sending_socket_and_turns_to_every_socket() -> None:
    """Lifecycle step 3: a player's frames go to every socket, a request's answer only
    to the socket that sent it."""
    async with running_server() as server:
        async with connect(server.url) as one, connect(server.url) as two:
            await one.hello(server.token("alice"))
            await two.hello(server.token("alice"))
            await one.send({"t": "say", "id": 1, "npc": "guard", "text": "open the gate"})
            ack = await one.expect("ack")
            theirs = await two.recv_until(
                lambda f: f["t"] == "turn.end" and f["turn"] == ack["turn"]
            )
            assert any(f["t"] == "turn.start" for f in theirs)
            assert not [f for f in theirs if f["t"] == "ack"]
            await two.send({"t": "ping", "id": "p2"})
            assert (await two.expect("pong"))["id"] == "p2"
            await one.send({"t": "ping", "id": "p1"})
            pong = await one.recv_until(lambda f: f["t"] == "pong")
            assert pong[-1]["id"] == "p1"  # its own pong only: p2 went to `two`


async def test_typing_without_a_room_is_acked_and_tells_nobody() -> None:
    async with running_server() as server:
        async with connect(server.url) as alice, connect(server.url) as bob:
            for client, name in ((alice, "alice"), (bob, "bob")):
                await client.hello(server.token(name))
                await client.send({"t": "join", "id": 1, "room": "inn"})
                await client.expect("ack")
            await alice.send({"t": "typing", "id": 2, "on": True, "npc": "guard"})
            assert (await alice.expect("ack"))["id"] == 2
            await alice.send({"t": "typing", "id": 3, "on": True, "room": "inn"})
            assert (await alice.expect("ack"))["id"] == 3
            typing = await bob.recv_until(lambda f: f["t"] == "typing")
            assert [f.get("room") for f in typing if f["t"] == "typing"] == ["inn"]


async def test_a_done_action_end_comes_just_before_its_turn_end() -> None:
    """Actions: `done` and `retracted` come just before the turn's `turn.end`."""
    config = server_config(scripted={"tokens_per_second": 300})
    async with running_server(config) as server, connect(server.url) as alice:
        await alice.hello(server.token("alice"))
        await alice.send({"t": "say", "id": 1, "npc": "guard", "text": "which way to the market?"})
        frames = await alice.recv_until(lambda f: f["t"] == "turn.end")
        kinds = [f["t"] for f in frames]
        assert "action" in kinds
        assert kinds[-2:] == ["action.end", "turn.end"] and frames[-2]["status"] == "done"


async def test_a_resume_without_delta_ms_gets_no_window() -> None:
    """Paced deltas: each hello, a resume's included, sets the window; none asked is 0."""
    async with running_server() as server:
        async with connect(server.url) as first:
            await first.send({"t": "hello", "token": server.token("alice"), "delta_ms": 50})
            welcome = await first.expect("welcome")
            assert welcome["limits"]["delta_ms"] == 50
            old = {"session": welcome["session"], "seq": welcome["seq"]}
            first.ws.transport.abort()
        async with connect(server.url) as second:
            resumed = await second.hello(server.token("alice"), resume=old)
            assert resumed["resumed"] is True and resumed["limits"]["delta_ms"] == 0
