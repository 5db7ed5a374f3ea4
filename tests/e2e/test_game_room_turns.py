"""A room turn the game started (POST /api/say with a room) has no speaker: who may
answer its actions and cut it short, over real sockets and real HTTP."""

from __future__ import annotations

import pytest

from tests.e2e.test_api import AUTH, api_server, player
from tests.support.client import connect

pytestmark = pytest.mark.e2e


async def test_any_member_answers_an_action_of_a_game_caused_room_turn() -> None:
    """Only the speaker may answer a room turn's action, and a game-caused turn has none:
    its approval could never be given (a quest offered to a room on a game event was
    always `expired`). The first member to answer decides; a later answer finds it gone."""
    async with (
        api_server() as (server, http),
        connect(server.url) as alice,
        connect(server.url) as bob,
    ):
        await player(server, alice, "alice", "market")
        await player(server, bob, "bob", "market")
        body = {"npc": "merchant", "room": "market", "text": "what wares do you sell?"}
        answer = await http.post("/api/say", json=body, headers=AUTH)
        assert answer.status_code == 200, answer.text
        action = await bob.expect("action")
        assert action["name"] == "open_shop" and action["approval"] is True
        await bob.send({"t": "act", "id": 7, "action": action["action"], "accept": True})
        # The answer's action.end goes out to the room before the act's ack.
        frames = await bob.recv_until(lambda f: f["t"] == "ack" and f["id"] == 7)
        ends = [f for f in frames if f["t"] == "action.end"]
        assert [(f["action"], f["status"]) for f in ends] == [(action["action"], "accepted")]
        end = await alice.recv_until(
            lambda f: f["t"] == "action.end" and f["action"] == action["action"]
        )
        assert end[-1]["status"] == "accepted"
        await alice.send({"t": "act", "id": 8, "action": action["action"], "accept": False})
        error = await alice.expect("error")
        assert (error["code"], error["id"]) == ("unknown_action", 8)


async def test_any_member_interrupts_a_game_caused_room_turn() -> None:
    """`room_interrupt = "speaker"` (the merchant) lets the speaker cut a room turn; a turn
    the game started has no speaker, so any member may. Every member gets its end."""
    async with (
        api_server() as (server, http),
        connect(server.url) as alice,
        connect(server.url) as bob,
    ):
        await player(server, alice, "alice", "market")
        await player(server, bob, "bob", "market")
        body = {"npc": "merchant", "room": "market", "text": "any rumours from the road?"}
        turn = (await http.post("/api/say", json=body, headers=AUTH)).json()["turn"]
        await alice.recv_until(lambda f: f["t"] == "delta" and f["turn"] == turn)
        await alice.send({"t": "interrupt", "id": 9, "turn": turn})
        # The cut's turn.end goes out to the room before the interrupt's ack.
        frames = await alice.recv_until(lambda f: f["t"] == "ack" and f["id"] == 9)
        ends = [
            (f.get("turn"), f.get("reason", f.get("code")))
            for f in frames
            if f["t"] in ("turn.end", "error")
        ]
        assert ends == [(turn, "interrupted")], frames
        end = await bob.recv_until(lambda f: f["t"] == "turn.end" and f["turn"] == turn)
        assert end[-1]["reason"] == "interrupted"
