"""The per-player socket cap across nodes does not refuse a resume that takes its session
over (real redis-server, two npc-server processes, WebSocket clients)."""

from __future__ import annotations

from pathlib import Path

import pytest

from npc_server.protocol.codes import CloseCode
from tests.cluster.test_cluster import cluster_config
from tests.cluster.test_handover import resume_of
from tests.support.client import connect
from tests.support.redis import redis_server
from tests.support.server import start_server_process

pytestmark = pytest.mark.e2e


async def test_at_the_cap_a_resume_on_another_node_takes_the_session_over(
    tmp_path: Path,
) -> None:
    """With one socket a player (refuse), alice's socket on A is her one; a hello on B that
    resumes its session adds none: it is welcomed with the session and A's socket gets
    4503, while a fresh hello of hers on B is refused with 4513."""
    with redis_server() as redis:
        limits = 'max_sockets_per_player = 1\nsockets_policy = "refuse"\n'
        config = cluster_config(tmp_path, redis, limits=limits)
        a, b = (start_server_process(env={"NPC_SERVER_CONFIG": str(config)}) for _ in "ab")
        try:
            async with connect(a.url) as first, connect(b.url) as second:
                await first.hello(a.token("alice"))
                welcome = await second.hello(b.token("alice"), resume=resume_of(first))
                assert welcome["resumed"] is True and welcome["session"] == first.session
                assert await first.close_code() == CloseCode.REPLACED
                async with connect(b.url) as third:
                    await third.send({"t": "hello", "token": b.token("alice")})
                    assert await third.close_code() == CloseCode.TOO_MANY_CONNECTIONS
                await second.send({"t": "ping", "id": 1})
                assert (await second.expect("pong"))["id"] == 1
        finally:
            a.kill()
            b.kill()
