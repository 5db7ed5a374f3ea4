"""A room member cannot cheaply end other members' held sessions (real server, sockets).

A held session (its socket dropped, waiting for a resume) queues what it misses up to
its bounds; past them it ends and its resume gets a new session. Presence of a member
who joins and leaves over and over is one queued frame per member and room (the latest
replaces the earlier in place), and a held session that does end is forgotten at once:
its rooms see the player leave and its player has no session any more.
"""

from __future__ import annotations

import pytest

from npc_server.session import SessionState
from tests.cluster.test_handover import drop
from tests.support.client import RawClient, connect
from tests.support.server import RunningServer, running_server, server_config
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

SMALL = {"queue_frames": 8, "rate_per_s": 1000, "rate_burst": 1000}  # held: 4 x 8 frames


async def acked(client: RawClient, request: int) -> None:
    await client.recv_until(lambda f: f.get("t") == "ack" and f.get("id") == request)


async def join(client: RawClient, room: str, request: int) -> None:
    await client.send({"t": "join", "id": request, "room": room})
    await acked(client, request)


async def held(server: RunningServer, client: RawClient) -> None:
    """Drop the client's connection and wait until the server holds its session."""
    session = client.session
    drop(client)

    def detached() -> bool:
        found = server.node.hub.get(session or "")
        return found is not None and found.state is SessionState.DETACHED

    await wait_until(detached, what="the session held for a resume")


async def test_a_member_who_flaps_in_and_out_costs_a_held_session_one_frame() -> None:
    """Eve joins and leaves the inn 100 times (200 presence frames, over six times the
    held session's bound) while alice is away: alice resumes her session, gapless, and
    gets eve's presence once, as it is now."""
    async with running_server(server_config(limits=SMALL)) as server:
        async with connect(server.url) as alice, connect(server.url) as eve:
            await alice.hello(server.token("alice"))
            await join(alice, "inn", 1)
            await eve.hello(server.token("eve"))
            await held(server, alice)
            for i in range(100):
                await join(eve, "inn", 10 + 2 * i)
                await eve.send({"t": "leave", "id": 11 + 2 * i, "room": "inn"})
                await eve.expect("ack")
            async with connect(server.url) as back:
                resume = {"session": alice.session, "seq": alice.last_seq}
                welcome = await back.hello(server.token("alice"), resume=resume)
                assert welcome["resumed"] is True
                await back.send({"t": "ping", "id": 99})
                frames = await back.recv_until(lambda f: f.get("t") == "pong")
        presence = [f for f in frames if f.get("t") == "presence" and f["player"] == "eve"]
        assert [(f["room"], f["state"]) for f in presence] == [("inn", "left")]
        seqs = [f["seq"] for f in frames if "seq" in f]
        assert seqs == list(range(alice.last_seq + 1, alice.last_seq + 1 + len(seqs)))


async def test_a_held_session_that_outgrows_its_bounds_is_forgotten_at_once() -> None:
    """Bob's talk in the inn overflows alice's held session (says the guard answers):
    it ends, and at once alice leaves the inn (bob sees it), has no session and is not
    online; her resume gets a new session."""
    async with running_server(server_config(limits=SMALL)) as server:
        async with connect(server.url) as alice, connect(server.url) as bob:
            await alice.hello(server.token("alice"))
            await join(alice, "inn", 1)
            await bob.hello(server.token("bob"))
            await join(bob, "inn", 2)
            await held(server, alice)
            for i in range(40):
                say = {"t": "say", "id": 100 + i, "npc": "guard", "room": "inn", "text": f"hey {i}"}
                await bob.send(say)
                await acked(bob, 100 + i)
                if not server.node.hub.sessions_of("alice"):
                    break
            else:
                pytest.fail("alice's held session never outgrew its bounds")
            left = await bob.recv_until(
                lambda f: f.get("t") == "presence" and f["player"] == "alice"
            )
            assert left[-1]["state"] == "left"
            assert not server.node.hub.is_online("alice")
            assert "alice" not in server.node.hub.members("inn")
            async with connect(server.url) as back:
                resume = {"session": alice.session, "seq": alice.last_seq}
                welcome = await back.hello(server.token("alice"), resume=resume)
                assert welcome["resumed"] is False and welcome["session"] != alice.session
