"""`room.gap` once per gap: nodes in this process, each with its part in the cluster
started, on a real redis-server that stops and starts again.

Bob is on node Q, in the inn. Carol, on node P, says something in the inn while Redis
is away: Q's own link was down (Q tells its members once it is back), and P could not
publish the line (P tells Q once it is back). Two reports of one loss."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from npc_server.brokers import room_channel, session_channel
from npc_server.brokers.redis import RedisBroker
from npc_server.node import Node
from npc_server.protocol.frames import Ack, RoomGap, Said, ServerFrame
from npc_server.session import Session
from tests.cluster.test_api_forwarded import started
from tests.support.redis import RedisServer
from tests.support.wait import wait_until

SAID = Said("inn", "carol", "merchant", "lost while Redis was away")


def broker(node: Node) -> RedisBroker:
    found = node.broker
    assert isinstance(found, RedisBroker)
    return found


def member(
    node: Node,
    player: str,
    monkeypatch: pytest.MonkeyPatch,
    observe: Callable[[ServerFrame], None] = lambda frame: None,
) -> list[ServerFrame]:
    """An attached session of `player` in the inn on `node`: the frames pushed to it
    (each shown to `observe` first)."""
    session = node.open_session(player)
    session.attach(object(), lambda: None, lambda code: None)
    node.hub.join("inn", player, quiet=True)
    got: list[ServerFrame] = []
    push = session.push_nowait

    def recording(frame: ServerFrame) -> None:
        observe(frame)
        got.append(frame)
        push(frame)

    monkeypatch.setattr(session, "push_nowait", recording)
    return got


def gaps(frames: list[ServerFrame]) -> int:
    return sum(isinstance(f, RoomGap) for f in frames)


@asynccontextmanager
async def a_line_lost_in_an_outage(
    redis: RedisServer, p: Node, q: Node, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[[], None]]:
    """Redis stops and starts again; Carol's line on P is lost meanwhile. P's report of
    it is held back until the block calls the function it gets (P came back later)."""
    reports = broker(p)._report_gaps
    monkeypatch.setattr(broker(p), "_report_gaps", lambda: None)
    await broker(q).wait_subscribed()
    redis.stop()
    try:
        await wait_until(lambda: not broker(q).connected and not broker(p).connected)
        p.hub.send_to_room("inn", SAID)  # not written: P's link is down
        assert broker(p)._gaps
    finally:
        redis.start()
    await wait_until(lambda: broker(p).available and broker(q).available, what="both back")

    def report() -> None:
        monkeypatch.setattr(broker(p), "_report_gaps", reports)
        reports()

    yield report


async def sent_after(p: Node, session: Session, got: list[ServerFrame]) -> None:
    """Wait until a frame P publishes now reached `session`: whatever P published before
    (its gap reports) was handled on the session's node by then."""
    broker(p).publish_nowait(session_channel(session.id), Ack(77))
    await wait_until(lambda: Ack(77) in got, what="P's later frame")


async def test_one_outage_reported_by_two_nodes_is_one_room_gap(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Q tells Bob of its own outage; P's report of the line it lost meanwhile comes with
    nothing of the room between: Bob gets one room.gap, not two."""
    async with started(redis, "p", "q") as (p, q):
        got = member(q, "bob", monkeypatch)
        async with a_line_lost_in_an_outage(redis, p, q, monkeypatch) as report:
            await wait_until(lambda: gaps(got) == 1, what="Q's own room.gap")
            report()
            [bob] = q.hub.sessions_of("bob")
            await sent_after(p, bob, got)
        assert gaps(got) == 1
        assert bob.holed_at > 0  # a resume from before the gap still gets a snapshot


async def test_a_room_gap_comes_once_the_room_is_delivered_again(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Q's link is back: Bob's room.gap comes once Redis delivers the inn to Q again, not
    before (what other nodes publish until then is lost too, and would follow it)."""
    async with started(redis, "p", "q") as (p, q):
        seen: list[bool] = []

        def noting(frame: ServerFrame) -> None:
            if isinstance(frame, RoomGap):
                seen.append(broker(q).available)

        member(q, "bob", monkeypatch, noting)
        async with a_line_lost_in_an_outage(redis, p, q, monkeypatch):
            await wait_until(lambda: bool(seen), what="Q's own room.gap")
        assert seen == [True]


async def test_a_frame_of_the_room_between_two_reports_makes_them_two_gaps(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something of the inn reaches Bob after Q's room.gap: P's report then is a gap after
    it, and Bob is told again."""
    async with started(redis, "p", "q") as (p, q):
        got = member(q, "bob", monkeypatch)
        async with a_line_lost_in_an_outage(redis, p, q, monkeypatch) as report:
            await wait_until(lambda: gaps(got) == 1, what="Q's own room.gap")
            q.hub.send_to_room("inn", Said("inn", "dave", "merchant", "said on Q"))
            report()
            [bob] = q.hub.sessions_of("bob")
            await sent_after(p, bob, got)
        assert gaps(got) == 2 and isinstance(got[-2], RoomGap)


async def test_a_told_gap_leaves_no_subscription_behind(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the inn's last member on Q leaves, Q stops subscribing it within a second or
    two, also just after a room.gap was told there."""
    async with started(redis, "p", "q") as (p, q):
        got = member(q, "bob", monkeypatch)
        async with a_line_lost_in_an_outage(redis, p, q, monkeypatch):
            await wait_until(lambda: gaps(got) == 1, what="Q's own room.gap")
        q.hub.leave("inn", "bob", quiet=True)
        channel = room_channel("inn")
        await wait_until(lambda: broker(q).subscriber_count(channel) == 0, timeout=3)
        await wait_until(lambda: channel not in broker(q)._remote, timeout=3)
