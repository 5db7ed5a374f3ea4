"""The broker contract, run against every implementation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import pytest

from npc_server.brokers import Broker, MemoryBroker, player_channel, room_channel
from npc_server.brokers.redis import RedisBroker
from npc_server.protocol.frames import Delta, ServerFrame, TurnEnd
from tests.support.redis import RedisServer, redis_server


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


BROKERS: dict[str, Callable[[RedisServer], Broker]] = {
    "memory": lambda redis: MemoryBroker("node-a"),
    "redis": lambda redis: RedisBroker(redis.url, "node-a"),
}


class Sink:
    """A subscriber that records what reaches it, like a session's queue."""

    def __init__(self, sink_id: str, player: str) -> None:
        self.id = sink_id
        self.player = player
        self.frames: list[ServerFrame] = []
        self.dropped: list[str] = []

    def push_nowait(self, frame: ServerFrame) -> None:
        self.frames.append(frame)

    def drop_turn_nowait(self, turn: str) -> int:
        self.dropped.append(turn)
        return 0


@asynccontextmanager
async def started(kind: str, redis: RedisServer) -> AsyncIterator[Broker]:
    made = BROKERS[kind](redis)
    await made.start()
    try:
        yield made
    finally:
        await made.aclose()


pytestmark = pytest.mark.parametrize("kind", sorted(BROKERS))


async def test_publish_reaches_every_subscriber_in_order(kind: str, redis: RedisServer) -> None:
    """Each subscriber of a channel gets each frame once, in publish order."""
    async with started(kind, redis) as broker:
        a, b = Sink("s1", "alice"), Sink("s2", "bob")
        channel = room_channel("tavern")
        broker.subscribe(channel, a)
        broker.subscribe(channel, b)
        frames = [Delta("t1", "hel", 0), Delta("t1", "lo", 3), TurnEnd("t1", "done", 5, 5)]
        for frame in frames:
            broker.publish_nowait(channel, frame)
        assert a.frames == frames and b.frames == frames


async def test_a_channel_going_from_one_subscriber_to_two_and_back(
    kind: str, redis: RedisServer
) -> None:
    """Each publish reaches whoever is subscribed then; `exclude` holds for a lone subscriber."""
    async with started(kind, redis) as broker:
        a, b = Sink("s1", "alice"), Sink("s2", "bob")
        channel = room_channel("tavern")
        broker.subscribe(channel, a)
        broker.publish_nowait(channel, Delta("t1", "1", 0))
        broker.publish_nowait(channel, Delta("t1", "x", 1), exclude="alice")
        broker.subscribe(channel, b)
        broker.publish_nowait(channel, Delta("t1", "2", 1))
        broker.unsubscribe(channel, a)
        broker.publish_nowait(channel, Delta("t1", "3", 2))
        broker.publish_nowait(channel, Delta("t1", "y", 3), exclude="bob")
        broker.unsubscribe(channel, b)
        broker.publish_nowait(channel, Delta("t1", "4", 3))
        broker.subscribe(channel, a)
        broker.publish_nowait(channel, Delta("t1", "5", 3))
        assert [f.text for f in a.frames if isinstance(f, Delta)] == ["1", "2", "5"]
        assert [f.text for f in b.frames if isinstance(f, Delta)] == ["2", "3"]


async def test_channels_are_separate(kind: str, redis: RedisServer) -> None:
    """A frame on one channel never reaches another channel's subscribers."""
    async with started(kind, redis) as broker:
        a, b = Sink("s1", "alice"), Sink("s2", "bob")
        broker.subscribe(player_channel("alice"), a)
        broker.subscribe(player_channel("bob"), b)
        broker.publish_nowait(player_channel("alice"), Delta("t1", "x", 0))
        assert len(a.frames) == 1 and b.frames == []


async def test_exclude_skips_one_players_subscribers(kind: str, redis: RedisServer) -> None:
    """`exclude` keeps a frame from every subscriber of that player only."""
    async with started(kind, redis) as broker:
        mine, also_mine, other = Sink("s1", "alice"), Sink("s2", "alice"), Sink("s3", "bob")
        channel = room_channel("tavern")
        for sink in (mine, also_mine, other):
            broker.subscribe(channel, sink)
        broker.publish_nowait(channel, Delta("t1", "x", 0), exclude="alice")
        assert mine.frames == also_mine.frames == [] and len(other.frames) == 1


async def test_subscribe_is_idempotent_and_unsubscribe_stops_delivery(
    kind: str, redis: RedisServer
) -> None:
    """Subscribing twice delivers once; after unsubscribing nothing arrives."""
    async with started(kind, redis) as broker:
        sink = Sink("s1", "alice")
        channel = room_channel("tavern")
        broker.subscribe(channel, sink)
        broker.subscribe(channel, sink)
        assert broker.subscriber_count(channel) == 1
        broker.publish_nowait(channel, Delta("t1", "a", 0))
        broker.unsubscribe(channel, sink)
        broker.unsubscribe(channel, sink)
        broker.publish_nowait(channel, Delta("t1", "b", 1))
        assert sink.frames == [Delta("t1", "a", 0)]
        assert broker.subscriber_count(channel) == 0
        assert broker.statistics().subscriptions == 0


async def test_unsubscribe_of_a_replaced_subscriber_keeps_the_new_one(
    kind: str, redis: RedisServer
) -> None:
    """Unsubscribing a stale object with a reused id leaves the current one subscribed."""
    async with started(kind, redis) as broker:
        old, new = Sink("s1", "alice"), Sink("s1", "alice")
        channel = player_channel("alice")
        broker.subscribe(channel, old)
        broker.subscribe(channel, new)
        broker.unsubscribe(channel, old)
        broker.publish_nowait(channel, Delta("t1", "x", 0))
        assert old.frames == [] and len(new.frames) == 1


async def test_drop_turn_reaches_every_subscriber(kind: str, redis: RedisServer) -> None:
    """An interrupt's drop reaches each subscriber of the channel, and no other."""
    async with started(kind, redis) as broker:
        a, b, outside = Sink("s1", "alice"), Sink("s2", "bob"), Sink("s3", "carol")
        channel = room_channel("tavern")
        broker.subscribe(channel, a)
        broker.subscribe(channel, b)
        broker.subscribe(player_channel("carol"), outside)
        broker.drop_turn_nowait(channel, "t9")
        assert a.dropped == b.dropped == ["t9"] and outside.dropped == []


async def test_publishing_to_an_empty_channel_is_harmless(kind: str, redis: RedisServer) -> None:
    """A channel without subscribers swallows frames and creates no state."""
    async with started(kind, redis) as broker:
        broker.publish_nowait(room_channel("nobody"), Delta("t1", "x", 0))
        broker.drop_turn_nowait(room_channel("nobody"), "t1")
        assert broker.statistics().channels == 0


async def test_when_subscribed_runs_once_subscriptions_deliver(
    kind: str, redis: RedisServer
) -> None:
    """The callback runs once every subscription so far is live (at once in memory)."""
    async with started(kind, redis) as broker:
        sink = Sink("s1", "alice")
        broker.subscribe(room_channel("tavern"), sink)
        ready = asyncio.Event()
        broker.when_subscribed(ready.set)
        await asyncio.wait_for(ready.wait(), 10)
        later = asyncio.Event()
        broker.when_subscribed(later.set)  # nothing new to wait for
        await asyncio.wait_for(later.wait(), 10)


async def test_each_delivery_names_its_origin_and_a_growing_number(
    kind: str, redis: RedisServer
) -> None:
    """During a push `delivering` is (this node, n) with n growing per publication, and
    `position` reports the last n; messages to nodes that do not exist go nowhere."""
    async with started(kind, redis) as broker:
        seen: list[tuple[str, int]] = []

        class Recorder(Sink):
            def push_nowait(self, frame: ServerFrame) -> None:
                seen.append(broker.delivering)

        broker.subscribe(room_channel("tavern"), Recorder("s1", "alice"))
        broker.send_nowait("no-such-node", {"k": "hello"})
        for at in range(3):
            broker.publish_nowait(room_channel("tavern"), Delta("t1", "x", at))
        origins = {origin for origin, _ in seen}
        numbers = [number for _, number in seen]
        assert len(origins) == 1 and numbers == sorted(set(numbers)) and len(numbers) == 3
        assert broker.position()[origins.pop()] == numbers[-1]


async def test_the_channels_listened_on_here_are_listed_by_prefix(
    kind: str, redis: RedisServer
) -> None:
    """What a node's part in the cluster asks (the rooms it tells of a gap): the channels
    this node's subscribers listen on (`MemoryBroker.channels`, `RedisBroker.local_channels`)."""
    async with started(kind, redis) as broker:
        listed = broker.channels if isinstance(broker, MemoryBroker) else broker.local_channels  # type: ignore[attr-defined]
        inn, alice = Sink("s1", "alice"), Sink("s2", "alice")
        broker.subscribe(room_channel("inn"), inn)
        broker.subscribe(player_channel("alice"), alice)
        assert listed("room:") == [room_channel("inn")]
        assert sorted(listed()) == sorted([room_channel("inn"), player_channel("alice")])
        broker.unsubscribe(room_channel("inn"), inn)
        assert listed("room:") == []
