"""Turn ids that name a node that is not alive (it stopped, or it never was): answered
`unknown_turn` without waiting on it, and logged only for a real node that went away
(real redis-server, two npc-server processes, HTTP and WebSockets on loopback)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from npc_server.cluster.forward import owner_of
from npc_server.cluster.leases import CHECK_BOUND
from tests.cluster.test_cluster import cluster_config, join
from tests.cluster.test_handover import start_long_turn
from tests.support.client import RawClient, connect
from tests.support.redis import redis_server
from tests.support.server import ServerProcess, start_server_process
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

API_KEY = "k" * 40
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# At once: well under the 2 s an answer from another node may take.
AT_ONCE_S = 1.0


def stopped_lines(node: ServerProcess) -> list[str]:
    return [line for line in node.output if "stopped;" in line and "WARNING" in line]


async def interrupt(client: RawClient, req: int, turn: str) -> dict[str, object]:
    await client.send({"t": "interrupt", "id": req, "turn": turn})
    [*_, answer] = await client.recv_until(lambda f: f.get("id") == req)
    return answer


async def test_a_game_interrupt_of_a_turn_whose_node_is_not_alive_is_unknown_at_once(
    tmp_path: Path,
) -> None:
    """`POST /api/interrupt` to A for a turn of a node that never was (`t-zzzz-1`) and for
    one of B after B stopped: 404 `unknown_turn` at once, not a 503 after waiting for an
    answer that cannot come; a turn of B while B runs still reaches B."""
    with redis_server() as redis:
        config = cluster_config(tmp_path, redis, tokens_per_second=20)
        env = {"NPC_SERVER_CONFIG": str(config), "NPC_SERVER_API_KEY": API_KEY}
        a, b = start_server_process(env=env), start_server_process(env=env)
        try:
            async with httpx.AsyncClient(base_url=a.http_url) as game:
                async with connect(b.url) as carol:
                    await carol.hello(b.token("carol"))
                    turn, _ = await start_long_turn(carol)
                    cut = await game.post("/api/interrupt", json={"turn": turn}, headers=AUTH)
                    assert cut.status_code == 200 and cut.json()["interrupted"] is True, cut.text
                assert b.terminate(signal.SIGTERM) == 0
                for gone in ("t-zzzz-1", turn):
                    started = time.monotonic()
                    answer = await game.post("/api/interrupt", json={"turn": gone}, headers=AUTH)
                    took = time.monotonic() - started
                    assert answer.status_code == 404, (gone, answer.text)
                    assert answer.json()["error"]["code"] == "unknown_turn"
                    assert "Retry-After" not in answer.headers
                    assert took < AT_ONCE_S, (gone, took)
        finally:
            a.kill()
            b.kill()


async def test_turn_requests_naming_made_up_nodes_log_nothing_and_a_real_node_once(
    tmp_path: Path,
) -> None:
    """Mallory, on A, sends interrupts for turns of nodes that never lived: each is
    answered `unknown_turn` and A logs no node as stopped. B, which relays a turn to
    Alice on A, is killed: A logs it once, and Mallory's interrupts naming B afterwards
    add no line."""
    with redis_server() as redis:
        config = cluster_config(tmp_path, redis, tokens_per_second=20)
        env = {"NPC_SERVER_CONFIG": str(config)}
        a, b = start_server_process(env=env), start_server_process(env=env)
        try:
            async with connect(a.url) as mallory, connect(a.url) as alice:
                await mallory.hello(a.token("mallory"))
                for i in range(5):
                    answer = await interrupt(mallory, 10 + i, f"t-fake{i}-1")
                    assert (answer["t"], answer["code"]) == ("error", "unknown_turn"), answer
                assert stopped_lines(a) == []

                await alice.hello(a.token("alice"))
                await join(alice, "inn")
                async with connect(b.url) as bob:
                    await bob.hello(b.token("bob"))
                    await join(bob, "inn")
                    turn, _ = await start_long_turn(bob, room="inn")
                    await alice.recv_until(lambda f: f["t"] == "delta" and f["turn"] == turn)
                    b.kill()
                    ended = await alice.recv_until(
                        lambda f: f["t"] == "turn.end" and f["turn"] == turn,
                        timeout=CHECK_BOUND + 2,
                    )
                    assert ended[-1]["reason"] == "error"
                # Logged as the turn ends: the line may reach the output a moment later.
                await wait_until(lambda: bool(stopped_lines(a)), what="the stopped line")
                [line] = stopped_lines(a)
                assert repr(owner_of(turn)) in line, line
                for i in range(3):
                    answer = await interrupt(mallory, 20 + i, f"t-{owner_of(turn)}-{i}")
                    assert (answer["t"], answer["code"]) == ("error", "unknown_turn"), answer
                assert len(stopped_lines(a)) == 1, stopped_lines(a)
        finally:
            a.kill()
            b.kill()
