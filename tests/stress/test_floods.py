"""Inbound floods: rate limiting, the 4029 close, bounded memory, released sockets."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from npc_server.protocol.codes import CloseCode
from tests.stress.fuzz import pack
from tests.stress.leaks import connection_open, server_connections, wait_for
from tests.stress.peers import close_received, joined_member, local_port
from tests.stress.scenarios import (
    FLOOD_LIMITS,
    FLOODER_CLOSE_TIMEOUT,
    QUICK,
    edge_of,
    flood,
    flood_until_closed,
    inbound_flood,
    only_session,
    sustained_flood,
)
from tests.support.server import running_server, server_config

pytestmark = pytest.mark.e2e


async def test_fast_flood_is_rate_limited_then_closed_4029() -> None:
    """A client flooding as fast as it can gets rate_limited, then 4029; others go on."""
    report = await inbound_flood(QUICK)
    assert report.leaks.clean, report.leaks.summary()


async def test_sustained_flood_of_big_messages_keeps_server_memory_flat() -> None:
    """Tens of MB of 8 KB messages at 50x the rate limit: RSS flat, other turns complete."""
    report = await sustained_flood(QUICK)
    assert report.leaks.clean, report.leaks.summary()


@pytest.mark.parametrize("trigger", ["flood-4029", "bad-frames-4501"])
async def test_server_socket_is_released_after_closing_a_busy_sender(trigger: str) -> None:
    """After 4029 (flood) or 4501 (pipelined bad frames) the server frees the socket in 3 s."""
    config = server_config(limits=FLOOD_LIMITS, server={"graceful_timeout": 0.5})
    async with running_server(config) as server:
        sender = await joined_member(
            server.url, server.token("sender"), "sender", close_timeout=FLOODER_CLOSE_TIMEOUT
        )
        peer = local_port(sender.client)
        edge = edge_of(server.node, only_session(server.node, "sender"))
        if trigger == "flood-4029":
            await flood_until_closed(sender, edge, pack({"t": "ping", "id": 1}))
            expected = CloseCode.RATE_LIMITED
        else:
            for data in [b"\xc1"] * 3 + [pack({"t": "ping", "id": i}) for i in range(30)]:
                await sender.client.ws.send(data)
            await asyncio.wait_for(edge.finished.wait(), 10)
            expected = CloseCode.PROTOCOL_VIOLATION
        released = await wait_for(
            lambda: not connection_open(os.getpid(), server.port, peer), time.monotonic() + 3
        )
        left = server_connections(os.getpid(), server.port)
        sender.client.ws.transport.abort()
        await asyncio.wait_for(sender.closed.wait(), 10)
    assert edge.close_code is expected, edge.close_code
    assert released, f"server socket still open 3 s after closing it: {left}"


async def test_sustained_flood_at_50x_the_rate_is_closed_4029() -> None:
    """A client sending 1000 msgs/s (50x rate_per_s) for 3 s is closed with 4029."""
    config = server_config(limits=FLOOD_LIMITS)
    async with running_server(config) as server:
        flooder = await joined_member(
            server.url, server.token("flooder"), "flooder", close_timeout=FLOODER_CLOSE_TIMEOUT
        )
        sent = await flood(
            flooder, pack({"t": "ping", "id": 1}), rate=1000, duration=3.0, max_frames=3000
        )
        code = close_received(flooder.client)
        if not flooder.closed.is_set():
            await flooder.close()
    assert sent < 3000, f"the flood ran its whole course ({sent} messages) without a close"
    assert code == CloseCode.RATE_LIMITED, f"{sent} messages in 3 s, close code {code}"


async def test_a_client_over_its_rate_that_answers_pings_is_not_closed_4001() -> None:
    """A client flooding (never closed 4029 here) but answering every ping is not closed 4001."""
    heartbeat = 0.5
    limits = {**FLOOD_LIMITS, "heartbeat": heartbeat, "flood_close_after": 10**9}
    async with running_server(server_config(limits=limits)) as server:
        busy = await joined_member(server.url, server.token("busy"), "busy")
        typing = pack({"t": "typing", "on": True})
        # 100x the rate, paced so that nothing queues up: the pongs are not late.
        sent = await flood(busy, typing, rate=2000, duration=4 * heartbeat, max_frames=10**6)
        pings = sum(f.get("t") == "ping" for _, f in busy.frames)
        code = close_received(busy.client)
        if not busy.closed.is_set():
            await busy.close()
    assert pings >= 1, "no ping arrived"
    assert code != CloseCode.HEARTBEAT_TIMEOUT, f"closed 4001 after {sent} msgs, {pings} pongs"
