"""The handover between two nodes in this process, on a real redis-server: dedup in the flow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack

from npc_server.brokers.redis import RedisBroker
from npc_server.node import Node
from npc_server.npcs import load_npcs
from npc_server.protocol.frames import Ack, Delta, Resume
from npc_server.session import Session
from tests.support.redis import RedisServer
from tests.support.server import DEMO_NPCS, server_config
from tests.support.wait import wait_until


@asynccontextmanager
async def two_nodes(redis: RedisServer) -> AsyncIterator[tuple[Node, Node]]:
    config, npcs = server_config(), load_npcs(DEMO_NPCS)
    x, b = (Node(config, npcs, broker=RedisBroker(redis.url, name)) for name in ("x", "b"))
    for node in (x, b):
        await node.broker.start()
    try:
        yield x, b
    finally:
        for node in (x, b):
            # Closed while a SUBSCRIBE is in flight, the reader may never end (see the report).
            await node.broker.wait_subscribed()  # type: ignore[attr-defined]
            await node.broker.aclose()


def detached_with_written(node: Node, count: int) -> Session:
    session = node.open_session("alice")
    for n in range(count):
        session.push_nowait(Ack(n + 1))
    session.take_writes_nowait(node.clock())
    session.detach(node.clock())
    return session


def seqs(data: list[bytes]) -> list[int]:
    return [msgpack.unpackb(d)["seq"] for d in data]


async def test_frames_around_the_export_reach_the_new_session_once(redis: RedisServer) -> None:
    """A delta X publishes before its export arrives via X's queue only; one after, via Redis."""
    async with two_nodes(redis) as (x, b):
        session = detached_with_written(x, 3)
        await x.broker.wait_subscribed()  # type: ignore[attr-defined]
        take = x.handover._on_take

        def take_between_two_deltas(origin: str, message: dict[str, Any]) -> None:
            # B's stand-in gets both through Redis; X's export holds only the first.
            x.hub.send_to_player("alice", Delta("t1", "before ", 0))
            take(origin, message)
            x.hub.send_to_player("alice", Delta("t1", "after", 7))

        x.broker.on_message("handover.take", take_between_two_deltas)
        handed = await b.handover.resume("alice", Resume(session.id, 1))
        assert handed is not None
        moved, replay = handed
        assert moved.id == session.id and seqs(replay) == [2, 3]
        assert x.hub.get(session.id) is None and b.hub.get(session.id) is moved
        # "after" comes through Redis, to the stand-in or to the session: either way once.
        await wait_until(lambda: moved.queue.statistics().pushed >= 2, what="the later delta")
        queued = moved.take_queued_nowait()
        assert all(isinstance(f, Delta) for f in queued)
        assert "".join(f.text for f in queued if isinstance(f, Delta)) == "before after"
