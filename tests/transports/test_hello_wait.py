"""A session that ends while its hello waits (for a cluster's subscriptions) is not opened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from npc_server.brokers.memory import MemoryBroker
from npc_server.node import Node
from npc_server.npcs import load_npcs
from npc_server.protocol.codes import CloseCode
from npc_server.tokens import TokenClaims
from npc_server.transports.base import ClientLink, Refusal
from tests.support.server import DEMO_NPCS, server_config


class SlowSubscriptions(MemoryBroker):
    """A broker whose subscriptions are confirmed only when the test says so (as Redis
    confirms them a round trip later)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Callable[[], None]] = []
        self.asked = asyncio.Event()

    def when_subscribed(
        self, callback: Callable[[], None], failed: Callable[[], None] | None = None
    ) -> None:
        self.waiting.append(callback)
        self.asked.set()


async def test_a_kick_during_the_hello_refuses_the_socket_instead_of_welcoming_it() -> None:
    """Kicked while its hello waits for the session's subscriptions, a socket is refused
    with the kick's close code; no socket is attached to the ended session."""
    broker = SlowSubscriptions()
    node = Node(server_config(), load_npcs(DEMO_NPCS), broker=broker)
    link = ClientLink(node, "secret", transport="test", address="127.0.0.1")
    hello = asyncio.create_task(link.attach_async(TokenClaims("alice", time.time() + 60), None))
    await asyncio.wait_for(broker.asked.wait(), 5)
    (session,) = node.hub.sessions_of("alice")
    node.end_session(session, CloseCode.KICKED)  # what POST /api/kick does on this node
    for confirm in broker.waiting:
        confirm()
    with pytest.raises(Refusal) as refused:
        await asyncio.wait_for(hello, 5)
    assert refused.value.code is CloseCode.KICKED
    assert session.owner is None and not node.hub.sessions_of("alice")
