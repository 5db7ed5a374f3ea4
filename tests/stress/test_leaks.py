"""The leak check itself: it must see what a server still holds."""

from __future__ import annotations

import pytest

from tests.stress.leaks import in_process_baseline, refs, settle_in_process, warm_up
from tests.stress.peers import open_client
from tests.support.server import running_server, server_config

pytestmark = pytest.mark.e2e


async def test_leak_check_reports_a_socket_session_and_room_still_held() -> None:
    """A client left connected in a room shows as socket, task, fd and registry leaks."""
    config = server_config(limits={"resume_window": 0.05})
    async with running_server(config) as server:
        await warm_up(server)
        baseline = await in_process_baseline(server)
        client = await open_client(server.url)
        await client.hello(server.token("lingering"))
        await client.send({"t": "join", "id": 1, "room": "hall"})
        assert (await client.expect("ack"))["id"] == 1
        [session] = server.node.hub.sessions_of("lingering")
        held = await settle_in_process(
            server,
            baseline,
            rss_tolerance_mb=64,
            players=["lingering"],
            sessions=refs([session]),
            timeout=0.5,
        )
        await client.ws.close()
        released = await settle_in_process(
            server, baseline, rss_tolerance_mb=64, players=["lingering"], sessions=refs([session])
        )
    assert held.server_sockets and held.fds > 0 and held.tasks is not None and held.tasks > 0
    assert {"sessions", "attached", "players", "rooms", "memberships"} <= set(held.registry)
    assert held.registry["room_memberships_of_players"] == 1
    assert any("not expired" in p for p in held.problems), held.problems
    assert released.clean, released.summary()
