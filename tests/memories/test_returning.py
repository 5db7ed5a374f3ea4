"""Memory across sessions in one process (real Hypercorn): the NPC greets a returning player."""

from __future__ import annotations

import pytest

from npc_server.session import SessionState
from npc_server.turns import Audience
from tests.e2e.test_connections import drop
from tests.e2e.test_core import talk, text_of
from tests.support.client import connect
from tests.support.server import RunningServer, running_server
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

GREETING = "Back again, alice? "


async def leave(server: RunningServer, player: str, npc: str) -> None:
    """Wait until the player's conversation with `npc` is forgotten (the session ended)."""
    await wait_until(
        lambda: server.node.find_conversation(npc, Audience(player=player)) is None,
        what=f"the conversation of {npc} with {player} to be forgotten",
    )


async def test_a_player_who_comes_back_is_greeted_and_a_stranger_is_not() -> None:
    """alice talks, closes (her session ends), comes back: "Back again, alice?"; bob gets none."""
    async with running_server() as server:
        async with connect(server.url) as alice:
            await alice.hello(server.token("alice"))
            ack, frames = await talk(alice, "merchant", "What do things cost?")
            first = text_of(frames, ack["turn"])
            assert first and not first.startswith("Back again")
        await leave(server, "alice", "merchant")
        async with connect(server.url) as alice:
            await alice.hello(server.token("alice"))
            ack, frames = await talk(alice, "merchant", "What do things cost?")
            again = text_of(frames, ack["turn"])
            assert again.startswith(GREETING)
            ack, frames = await talk(alice, "merchant", "What do things cost?", say_id=2)
            assert not text_of(frames, ack["turn"]).startswith("Back again")
            memory = server.node.find_conversation("merchant", Audience(player="alice"))
            assert memory is not None
            assert [m.text for m in memory.memory.lines()][:2] == ["What do things cost?", first]
        async with connect(server.url) as bob:
            await bob.hello(server.token("bob"))
            ack, frames = await talk(bob, "merchant", "What do things cost?")
            assert not text_of(frames, ack["turn"]).startswith("Back again")


async def test_another_npc_does_not_know_the_player() -> None:
    """Memory is per NPC: the guard has never met alice, even after the merchant has."""
    async with running_server() as server:
        async with connect(server.url) as alice:
            await alice.hello(server.token("alice"))
            await talk(alice, "merchant", "hello")
        await leave(server, "alice", "merchant")
        async with connect(server.url) as alice:
            await alice.hello(server.token("alice"))
            ack, frames = await talk(alice, "guard", "hello")
            assert not text_of(frames, ack["turn"]).startswith("Back again")
            ack, frames = await talk(alice, "merchant", "hello", say_id=2)
            assert text_of(frames, ack["turn"]).startswith(GREETING)


async def test_a_resumed_session_is_the_same_conversation() -> None:
    """A dropped socket resumed within the window keeps its conversation: no greeting."""
    async with running_server() as server:
        async with connect(server.url) as alice:
            await alice.hello(server.token("alice"))
            await talk(alice, "merchant", "hello")
            session_id, seq = alice.session, alice.last_seq
            await drop(alice)
        [session] = server.node.hub.sessions_of("alice")
        await wait_until(lambda: session.state is SessionState.DETACHED, what="session detached")
        async with connect(server.url) as alice:
            resume = {"session": session_id, "seq": seq}
            assert (await alice.hello(server.token("alice"), resume=resume))["resumed"]
            ack, frames = await talk(alice, "merchant", "hello", say_id=2)
            assert not text_of(frames, ack["turn"]).startswith("Back again")
