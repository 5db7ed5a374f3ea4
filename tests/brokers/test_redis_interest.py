"""A node publishes to Redis only where another node listens (`RedisBroker`'s "alone" channels).

Each test uses one real redis-server and two brokers as two nodes. The ordering
guarantee is checked as the cluster relies on it: a message another node sends
once its subscription is confirmed (a handover's ask, a join's catch-up) reaches
the publisher after that node's announcement of interest, so everything the
publisher sends from then on arrives.
"""

from __future__ import annotations

import asyncio
from typing import Any

from npc_server.brokers import room_channel, session_channel
from npc_server.brokers.redis import RedisBroker
from npc_server.protocol.frames import Delta, Said
from tests.brokers.test_broker import Sink
from tests.brokers.test_redis_broker import WAIT, nodes
from tests.support.redis import RedisServer
from tests.support.wait import wait_until

PRIVATE = session_channel("s1")


async def alone_on(broker: RedisBroker, channel: str, sink: Sink) -> None:
    """Subscribe `sink` alone and publish until the broker keeps `channel` local."""
    broker.subscribe(channel, sink)
    await asyncio.wait_for(broker.wait_subscribed(), WAIT)
    broker.publish_nowait(channel, Delta("t0", "first", 0))
    await wait_until(lambda: broker.redis_statistics().alone == 1, what="the channel alone")


async def both_subscribed(a: RedisBroker, b: RedisBroker, channel: str) -> tuple[Sink, Sink]:
    """A subscriber of `channel` on each node, once Redis has both subscriptions."""
    here, there = Sink("s1", "alice"), Sink("s2", "bob")
    a.subscribe(channel, here)
    b.subscribe(channel, there)
    await asyncio.wait_for(a.wait_subscribed(), WAIT)
    await asyncio.wait_for(b.wait_subscribed(), WAIT)
    return here, there


def answer_probes(broker: RedisBroker, channel: str, text: str) -> None:
    """Make `broker` publish a delta on `channel` as soon as a probe reaches it."""

    def on_probe(origin: str, message: dict[str, Any]) -> None:
        broker.publish_nowait(channel, Delta("t1", text, 0))

    broker.on_message("probe", on_probe)


def probe_once_subscribed(broker: RedisBroker, channel: str, target: str) -> None:
    broker.when_subscribed(lambda: broker.send_nowait(target, {"k": "probe"}))


async def test_a_channel_no_other_node_subscribes_stays_off_redis(redis: RedisServer) -> None:
    """After one publication answered by only its own subscription, a node's frames on that
    channel are delivered locally and not written to Redis."""
    async with nodes(redis) as (a, _):
        here = Sink("s1", "alice")
        await alone_on(a, PRIVATE, here)
        before = a.redis_statistics()
        for n in range(5):
            a.publish_nowait(PRIVATE, Delta("t0", f"w{n}", n))
        assert len(here.frames) == 6  # every frame still reaches the local session
        stats = a.redis_statistics()
        assert stats.kept_local == before.kept_local + 5 and stats.sent == before.sent


async def test_a_channel_another_node_subscribes_is_never_alone(redis: RedisServer) -> None:
    """With a subscriber on each node, every publication goes through Redis."""
    async with nodes(redis) as (a, b):
        _, there = await both_subscribed(a, b, PRIVATE)
        frames = [Delta("t0", f"w{n}", n) for n in range(20)]
        for frame in frames:
            a.publish_nowait(PRIVATE, frame)
            await asyncio.sleep(0)  # separate batches: each answer is learnt from
        await wait_until(lambda: len(there.frames) == 20, what="every frame on node b")
        assert there.frames == frames
        assert a.redis_statistics().kept_local == 0 and a.redis_statistics().alone == 0


async def test_a_new_subscriber_gets_everything_published_after_its_request(
    redis: RedisServer,
) -> None:
    """A node that subscribes a channel another node kept local, then sends that node a
    message, receives what the other node publishes in answer: the announcement of
    interest overtook nothing."""
    async with nodes(redis) as (a, b):
        await alone_on(a, PRIVATE, Sink("s1", "alice"))
        answer_probes(a, PRIVATE, "after the probe")
        there = Sink("s1-standin", "alice")
        b.subscribe(PRIVATE, there)
        probe_once_subscribed(b, PRIVATE, "node-a")
        await wait_until(lambda: len(there.frames) == 1, what="the answer on node b")
        assert there.frames == [Delta("t1", "after the probe", 0)]
        assert a.redis_statistics().alone == 0


async def test_after_redis_restarts_a_subscription_made_meanwhile_is_heard(
    redis: RedisServer,
) -> None:
    """A node that subscribed while Redis was away announces interest when it is back, and a
    node that had kept the channel local publishes to it again."""
    room = room_channel("tavern")
    async with nodes(redis) as (a, b):
        await alone_on(a, room, Sink("s1", "alice"))
        redis.stop()
        await wait_until(lambda: not a.connected and not b.connected, what="both offline")
        there = Sink("s2", "bob")
        b.subscribe(room, there)
        redis.start()
        await asyncio.wait_for(b.wait_subscribed(), WAIT)
        await wait_until(lambda: a.connected, what="node a back")
        answer_probes(a, room, "after the restart")
        probe_once_subscribed(b, room, "node-a")
        await wait_until(lambda: len(there.frames) == 1, what="the answer on node b")
        assert there.frames == [Delta("t1", "after the restart", 0)]


async def test_a_node_that_unsubscribed_makes_the_channel_alone_again(redis: RedisServer) -> None:
    """When the other node leaves, the publisher learns it from the next answers."""
    async with nodes(redis) as (a, b):
        _, there = await both_subscribed(a, b, PRIVATE)
        a.publish_nowait(PRIVATE, Delta("t0", "both", 0))
        await wait_until(lambda: len(there.frames) == 1, what="the frame on node b")
        b.unsubscribe(PRIVATE, there)
        await asyncio.wait_for(b.wait_subscribed(), WAIT)
        a.publish_nowait(PRIVATE, Delta("t0", "only a", 1))
        await wait_until(lambda: a.redis_statistics().alone == 1, what="the channel alone")
        assert there.frames == [Delta("t0", "both", 0)]


async def test_after_a_lost_link_nothing_is_learnt_alone_while_others_resubscribe(
    redis: RedisServer,
) -> None:
    """Back after Redis restarted, a node publishes even where only it listens (others may
    not have resubscribed yet), and `wait_subscribed` waits for the new connection's
    subscriptions."""
    async with nodes(redis) as (a, _):
        await alone_on(a, PRIVATE, Sink("s1", "alice"))
        kept = a.redis_statistics().kept_local
        redis.stop()
        await wait_until(lambda: not a.connected, what="node a offline")
        redis.start()
        await wait_until(lambda: a.connected, timeout=20, what="node a back")
        await asyncio.wait_for(a.wait_subscribed(), WAIT)
        assert a.redis_statistics().alone == 0
        sent = a.redis_statistics().sent
        a.publish_nowait(PRIVATE, Delta("t0", "after", 1))
        await wait_until(lambda: a.redis_statistics().sent > sent, what="the publication sent")
        a.publish_nowait(PRIVATE, Delta("t0", "again", 6))
        await wait_until(lambda: a.redis_statistics().sent > sent + 1, what="sent again")
        assert a.redis_statistics().alone == 0 and a.redis_statistics().kept_local == kept


async def test_room_talk_kept_local_just_before_a_newcomer_is_heard_reaches_it(
    redis: RedisServer,
) -> None:
    """A `said` a node kept local on a room no other node listened on, in the moment
    before it hears a newcomer's interest, is published to the newcomer then, once; a
    turn's delta kept local is not (turns are caught up from their node)."""
    room = room_channel("inn")
    async with nodes(redis) as (a, b):
        here = Sink("s1", "alice")
        await alone_on(a, room, here)
        said = Said(room="inn", player="alice", npc="bard", text="hello?")
        a.publish_nowait(room, said)
        a.publish_nowait(room, Delta("t0", "kept", 1))
        there = Sink("s2", "bob")
        b.subscribe(room, there)
        await asyncio.wait_for(b.wait_subscribed(), WAIT)
        await wait_until(lambda: len(there.frames) == 1, what="the said on node b")
        a.publish_nowait(room, Delta("t0", "after", 2))
        await wait_until(lambda: len(there.frames) == 2, what="the delta after")
        assert there.frames == [said, Delta("t0", "after", 2)]
        assert here.frames.count(said) == 1
