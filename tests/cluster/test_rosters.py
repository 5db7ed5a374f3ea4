"""`members` after a join in a cluster: the room's members on every node (real
redis-server, two npc-server processes, WebSockets on loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.test_cluster import cluster_config
from tests.cluster.test_cluster_api import a_ghost_node
from tests.support.client import connect
from tests.support.redis import redis_server
from tests.support.server import start_server_process

pytestmark = pytest.mark.e2e


async def test_a_joiner_on_one_node_gets_the_members_of_every_node(tmp_path: Path) -> None:
    """Alice and Carol joined on A; Bob joins on B: his `members` lists all three, and a
    later leave reaches him as presence; a node that never answers makes it `partial`."""
    with redis_server() as redis:
        config = cluster_config(tmp_path, redis)
        env = {"NPC_SERVER_CONFIG": str(config)}
        a, b = start_server_process(env=env), start_server_process(env=env)
        try:
            async with (
                connect(a.url) as alice,
                connect(a.url) as carol,
                connect(b.url) as bob,
                connect(b.url) as dave,
            ):
                for client, name, node in ((alice, "alice", a), (carol, "carol", a)):
                    await client.hello(node.token(name))
                    await client.send({"t": "join", "id": 1, "room": "inn"})
                    await client.expect("members")
                await bob.hello(b.token("bob"))
                await bob.send({"t": "join", "id": 1, "room": "inn"})
                frames = await bob.recv_until(lambda f: f["t"] == "members")
                assert frames[0]["t"] == "ack" and frames[-1]["room"] == "inn"
                assert frames[-1]["members"] == ["alice", "bob", "carol"]
                assert "partial" not in frames[-1]
                await carol.send({"t": "leave", "id": 2, "room": "inn"})
                left = await bob.recv_until(lambda f: f["t"] == "presence")
                assert (left[-1]["player"], left[-1]["state"]) == ("carol", "left")

                await a_ghost_node(redis)  # a node with a lease that never answers
                await dave.hello(b.token("dave"))
                await dave.send({"t": "join", "id": 1, "room": "inn"})
                roster = await dave.expect("members", timeout=10)
                assert roster["members"] == ["alice", "bob", "dave"]
                assert roster["partial"] is True
        finally:
            a.kill()
            b.kill()
