"""A node's events over a real socket: what the ops feed, metrics and logs are built on."""

from __future__ import annotations

import pytest

from npc_server.events import (
    AuthFailed,
    Closed,
    Connected,
    NodeEvent,
    SessionAttached,
    TurnEnded,
    TurnStarted,
    event_fields,
)
from npc_server.protocol.codes import CloseCode
from tests.support.client import connect
from tests.support.server import running_server, server_config
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


async def test_a_conversation_emits_connect_session_turns_and_close() -> None:
    """Connect, session, turn start and end with timings, then close with the peer's code."""
    config = server_config(scripted={"tokens_per_second": 40, "long_reply_chars": 2000})
    async with running_server(config) as server:
        events: list[NodeEvent] = []
        server.node.events.subscribe(events.append)
        async with connect(server.url) as alice:
            welcome = await alice.hello(server.token("alice"))
            await alice.send({"t": "say", "id": 1, "npc": "merchant", "text": "what wares?"})
            await alice.expect("delta")
            await alice.send({"t": "interrupt", "id": 2, "shown": 3})
            await alice.expect("turn.end")
        await wait_until(lambda: any(isinstance(e, Closed) for e in events))
        kinds = [e.KIND for e in events]
        assert kinds == ["connected", "session", "turn_started", "turn_ended", "closed"]
        connected, session, started, ended, closed = events
        assert isinstance(connected, Connected) and connected.address == "127.0.0.1"
        assert isinstance(session, SessionAttached)
        assert (session.player, session.session, session.outcome) == (
            "alice",
            welcome["session"],
            "new",
        )
        assert isinstance(started, TurnStarted) and started.npc == "merchant"
        assert isinstance(ended, TurnEnded) and ended.turn == started.turn
        assert ended.reason == "interrupted" and ended.kept <= 3
        assert ended.first_delta_s is not None and ended.interrupt_s is not None
        assert 0 <= ended.first_delta_s <= ended.duration_s
        assert isinstance(closed, Closed) and closed.code is None
        assert closed.peer_code == CloseCode.NORMAL and closed.player == "alice"
        assert event_fields(ended)["event"] == "turn_ended"


async def test_a_bad_token_emits_auth_failed_and_a_close_with_its_code() -> None:
    """A refused hello is an auth_failed event, then closed with 4500; no session."""
    async with running_server() as server:
        events: list[NodeEvent] = []
        server.node.events.subscribe(events.append)
        async with connect(server.url) as mallory:
            await mallory.send({"t": "hello", "token": "not-a-token"})
            assert await mallory.close_code() == CloseCode.AUTH_FAILED
        await wait_until(lambda: any(isinstance(e, Closed) for e in events))
        [failed] = [e for e in events if isinstance(e, AuthFailed)]
        [closed] = [e for e in events if isinstance(e, Closed)]
        assert failed.code == CloseCode.AUTH_FAILED and failed.reason
        assert closed.code == CloseCode.AUTH_FAILED and closed.session is None


async def test_a_resume_that_cannot_be_served_is_a_snapshot_outcome() -> None:
    """A resume of a session the node does not hold attaches a new one: outcome snapshot."""
    async with running_server() as server:
        events: list[NodeEvent] = []
        server.node.events.subscribe(events.append)
        async with connect(server.url) as alice:
            await alice.hello(server.token("alice"), resume={"session": "s-gone-1", "seq": 4})
        [attached] = [e for e in events if isinstance(e, SessionAttached)]
        assert attached.outcome == "snapshot"


@pytest.mark.parametrize("after_hello", [True, False])
async def test_a_message_over_frame_bytes_is_the_servers_1009_not_the_peers(
    after_hello: bool,
) -> None:
    """The WebSocket layer closes with 1009 itself: reported as the server's close (code
    1009, no peer code), after hello and before it. It was `peer_code=1009` (metrics:
    by="peer"), and before hello neither code at all."""
    async with running_server(server_config(limits={"frame_bytes": 1024})) as server:
        events: list[NodeEvent] = []
        server.node.events.subscribe(events.append)
        async with connect(server.url) as client:
            if after_hello:
                await client.hello(server.token("alice"))
            await client.send({"t": "say", "id": 1, "npc": "merchant", "text": "x" * 2000})
            assert await client.close_code() == CloseCode.MESSAGE_TOO_BIG
        await wait_until(lambda: any(isinstance(e, Closed) for e in events))
        [closed] = [e for e in events if isinstance(e, Closed)]
        assert (closed.code, closed.peer_code) == (CloseCode.MESSAGE_TOO_BIG, None)
        if after_hello:  # and the session waits for a resume, as after any 1009 before
            [session] = server.node.hub.sessions_of("alice")
            assert session.state.value == "detached"
