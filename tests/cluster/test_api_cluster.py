"""The game server's API in a cluster: a request to any node reaches the node that runs
the conversation (real redis-server, two npc-server processes, HTTP on loopback)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from npc_server.cluster.forward import owner_of
from tests.cluster.test_cluster import join
from tests.cluster.test_cluster_api import a_ghost_node
from tests.cluster.test_handover import drop, resume_of
from tests.cluster.test_ownership import say, slow_config
from tests.support.client import Frame, connect
from tests.support.redis import redis_server
from tests.support.server import start_server_process

pytestmark = pytest.mark.e2e

API_KEY = "k" * 40
AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def test_api_say_and_interrupt_reach_the_owner_from_another_node(tmp_path: Path) -> None:
    """While the questgiver answers Carol on node A, the game asks node B for a turn in the
    room: it queues behind hers on A (one turn at a time); the game's interrupt, sent to B,
    stops Carol's turn on A; a game say for a player on A, sent to B, reaches her."""
    with redis_server() as redis:
        config = slow_config(tmp_path, redis)
        env = {"NPC_SERVER_CONFIG": str(config), "NPC_SERVER_API_KEY": API_KEY}
        a, b = start_server_process(env=env), start_server_process(env=env)
        try:
            async with connect(a.url) as carol, httpx.AsyncClient(base_url=b.http_url) as game:
                await carol.hello(a.token("carol"))
                await join(carol, "inn")
                first = await say(carol, 2, "questgiver", "any quests for me?", room="inn")
                await carol.expect("delta")
                body = {"npc": "questgiver", "room": "inn", "event": "bell_rings"}
                answer = await game.post("/api/say", json=body, headers=AUTH)
                assert answer.status_code == 200, answer.text
                queued = answer.json()
                assert queued["queued"] == 1 and owner_of(queued["turn"]) == owner_of(first["turn"])
                cut = await game.post("/api/interrupt", json={"turn": first["turn"]}, headers=AUTH)
                assert cut.status_code == 200 and cut.json()["interrupted"] is True
                got = await carol.recv_until(
                    lambda f: f["t"] == "turn.start" and f["turn"] == queued["turn"]
                )
                [end] = [f for f in got if f["t"] == "turn.end" and f["turn"] == first["turn"]]
                assert end["reason"] == "interrupted" and got[-1]["caused_by"] == "game"
                private = {"npc": "guard", "player": "carol", "text": "the gate is closing"}
                answer = await game.post("/api/say", json=private, headers=AUTH)
                assert answer.status_code == 200, answer.text
                start = await carol.recv_until(
                    lambda f: f["t"] == "turn.start" and f["turn"] == answer.json()["turn"]
                )
                assert start[-1]["caused_by"] == "game" and start[-1]["npc"] == "guard"
                gone = await game.post(
                    "/api/interrupt",
                    json={"turn": f"t-{owner_of(first['turn'])}-99999"},
                    headers=AUTH,
                )
                assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_turn"
        finally:
            a.kill()
            b.kill()


async def test_a_member_on_another_node_answers_a_game_caused_room_turns_action(
    tmp_path: Path,
) -> None:
    """A room turn the game started has no speaker, so any member may answer its action,
    across nodes too: the game asks node A for the merchant's turn in the market, Dave on
    node B accepts her shop (his act is routed to A), and Carol on A gets the same end."""
    with redis_server() as redis:
        config = slow_config(tmp_path, redis)
        env = {"NPC_SERVER_CONFIG": str(config), "NPC_SERVER_API_KEY": API_KEY}
        a, b = start_server_process(env=env), start_server_process(env=env)
        try:
            async with (
                connect(a.url) as carol,
                connect(b.url) as dave,
                httpx.AsyncClient(base_url=a.http_url) as game,
            ):
                await carol.hello(a.token("carol"))
                await dave.hello(b.token("dave"))
                await join(carol, "market")
                await join(dave, "market")
                body = {"npc": "merchant", "room": "market", "text": "what wares do you sell?"}
                answer = await game.post("/api/say", json=body, headers=AUTH)
                assert answer.status_code == 200, answer.text
                action = await dave.expect("action")
                assert action["name"] == "open_shop" and action["approval"] is True
                await dave.send({"t": "act", "id": 7, "action": action["action"], "accept": True})

                def ended(f: Frame) -> bool:
                    return bool(f["t"] == "action.end" and f["action"] == action["action"])

                frames = await dave.recv_until(lambda f: f["t"] == "ack" and f.get("id") == 7)
                assert not [f for f in frames if f["t"] == "error"], frames
                if not any(ended(f) for f in frames):  # the end crosses Redis: it may follow
                    frames += await dave.recv_until(ended)
                ends = [f["status"] for f in frames if ended(f)]
                ends += [f["status"] for f in await carol.recv_until(ended) if ended(f)]
                assert ends == ["accepted", "accepted"]
        finally:
            a.kill()
            b.kill()


async def test_a_game_say_checks_presence_on_every_node(tmp_path: Path) -> None:
    """Node B holds nobody: a say it gets for a player or room no node has is refused as
    in one process (409, 404); for Carol, whose socket on A just dropped, it runs and her
    resume on A gets it; with a node that does not answer it goes ahead, `partial`."""
    with redis_server() as redis:
        config = slow_config(tmp_path, redis, tokens_per_second=200)
        env = {"NPC_SERVER_CONFIG": str(config), "NPC_SERVER_API_KEY": API_KEY}
        a, b = start_server_process(env=env), start_server_process(env=env)
        try:
            async with httpx.AsyncClient(base_url=b.http_url) as game:
                async with connect(a.url) as first:
                    await first.hello(a.token("carol"))
                    await join(first, "inn")
                    drop(first)
                nobody = {"npc": "guard", "player": "nobody", "text": "halt"}
                gone = await game.post("/api/say", json=nobody, headers=AUTH)
                assert gone.status_code == 409, gone.text
                assert gone.json()["error"]["code"] == "not_connected"
                cellar = {"npc": "guard", "room": "cellar", "event": "fire"}
                empty = await game.post("/api/say", json=cellar, headers=AUTH)
                assert empty.status_code == 404 and empty.json()["error"]["code"] == "unknown_room"
                held = {"npc": "guard", "player": "carol", "text": "the gate is closing"}
                answer = await game.post("/api/say", json=held, headers=AUTH)
                assert answer.status_code == 200 and "partial" not in answer.json(), answer.text
                async with connect(a.url) as second:
                    welcome = await second.hello(a.token("carol"), resume=resume_of(first))
                    assert welcome["resumed"] is True
                    turn = answer.json()["turn"]
                    started = await second.recv_until(
                        lambda f: f["t"] == "turn.start" and f["turn"] == turn
                    )
                    assert started[-1]["caused_by"] == "game"

                await a_ghost_node(redis)
                unsure = await game.post("/api/say", json=nobody, headers=AUTH)
                assert unsure.status_code == 200, unsure.text
                assert unsure.json()["partial"] is True
                assert unsure.json()["nodes_missing"] == ["ghost"]
        finally:
            a.kill()
            b.kill()
