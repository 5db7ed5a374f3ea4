"""An action waiting for approval on a node that drains: no node takes it over, so it
ends `expired` there, for the player's session wherever it goes and for the game."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.cluster.test_cluster import cluster_config
from tests.cluster.test_handover import drop, resume_of
from tests.support.client import connect
from tests.support.game_server import running_game_server
from tests.support.redis import redis_server
from tests.support.server import start_server_process
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


async def test_an_offer_open_on_a_draining_node_expires_for_the_session_it_hands_over(
    tmp_path: Path,
) -> None:
    """Alice is away from A with Mira's shop offer open when A drains: the session goes
    to B (or Redis) but the action stays A's, so A ends it `expired` before it exits;
    alice's resume on B replays that action.end, and the game gets `taken`, `expired`."""
    async with running_game_server() as game:
        with redis_server() as redis:
            config = cluster_config(tmp_path, redis)
            env = {"NPC_SERVER_CONFIG": str(config), "NPC_SERVER_GAME_URL": game.url}
            a, b = start_server_process(env=env), start_server_process(env=env)
            try:
                async with connect(a.url) as first:
                    await first.hello(a.token("alice"))
                    await first.send(
                        {"t": "say", "id": 1, "npc": "merchant", "text": "what wares do you sell?"}
                    )
                    frames = await first.recv_until(lambda f: f["t"] == "turn.end")
                    [offer] = [f for f in frames if f["t"] == "action"]
                    assert offer["approval"] is True
                    drop(first)
                await wait_until(lambda: len(game.events) == 1, what="taken")
                assert await asyncio.to_thread(a.terminate, signal.SIGTERM, 30.0) == 0
                async with connect(b.url) as second:
                    welcome = await second.hello(b.token("alice"), resume=resume_of(first))
                    assert welcome["resumed"] is True
                    end = await second.expect("action.end")
            finally:
                a.kill()
                b.kill()
    assert (end["action"], end["status"]) == (offer["action"], "expired")
    action = offer["action"]
    assert [e.json["id"] for e in game.events] == [f"{action}:taken", f"{action}:expired"]
    assert any("1 actions waiting for approval expired" in line for line in a.output)
