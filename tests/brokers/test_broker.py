"""The broker contract, run against every implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from npc_server.brokers import Broker, MemoryBroker, player_channel, room_channel
from npc_server.protocol.frames import Delta, ServerFrame, TurnEnd

BROKERS: dict[str, Callable[[], Broker]] = {"memory": MemoryBroker}


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


@pytest.fixture(params=sorted(BROKERS))
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    made = BROKERS[request.param]()
    await made.start()
    try:
        yield made
    finally:
        await made.aclose()


async def test_publish_reaches_every_subscriber_in_order(broker: Broker) -> None:
    """Each subscriber of a channel gets each frame once, in publish order."""
    a, b = Sink("s1", "alice"), Sink("s2", "bob")
    channel = room_channel("tavern")
    broker.subscribe(channel, a)
    broker.subscribe(channel, b)
    frames = [Delta("t1", "hel", 0), Delta("t1", "lo", 3), TurnEnd("t1", "done", 5, 5)]
    for frame in frames:
        broker.publish_nowait(channel, frame)
    assert a.frames == frames and b.frames == frames


async def test_channels_are_separate(broker: Broker) -> None:
    """A frame on one channel never reaches another channel's subscribers."""
    a, b = Sink("s1", "alice"), Sink("s2", "bob")
    broker.subscribe(player_channel("alice"), a)
    broker.subscribe(player_channel("bob"), b)
    broker.publish_nowait(player_channel("alice"), Delta("t1", "x", 0))
    assert len(a.frames) == 1 and b.frames == []


async def test_exclude_skips_one_players_subscribers(broker: Broker) -> None:
    """`exclude` keeps a frame from every subscriber of that player only."""
    mine, also_mine, other = Sink("s1", "alice"), Sink("s2", "alice"), Sink("s3", "bob")
    channel = room_channel("tavern")
    for sink in (mine, also_mine, other):
        broker.subscribe(channel, sink)
    broker.publish_nowait(channel, Delta("t1", "x", 0), exclude="alice")
    assert mine.frames == also_mine.frames == [] and len(other.frames) == 1


async def test_subscribe_is_idempotent_and_unsubscribe_stops_delivery(broker: Broker) -> None:
    """Subscribing twice delivers once; after unsubscribing nothing arrives."""
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


async def test_unsubscribe_of_a_replaced_subscriber_keeps_the_new_one(broker: Broker) -> None:
    """Unsubscribing a stale object with a reused id leaves the current one subscribed."""
    old, new = Sink("s1", "alice"), Sink("s1", "alice")
    channel = player_channel("alice")
    broker.subscribe(channel, old)
    broker.subscribe(channel, new)
    broker.unsubscribe(channel, old)
    broker.publish_nowait(channel, Delta("t1", "x", 0))
    assert old.frames == [] and len(new.frames) == 1


async def test_drop_turn_reaches_every_subscriber(broker: Broker) -> None:
    """An interrupt's drop reaches each subscriber of the channel, and no other."""
    a, b, outside = Sink("s1", "alice"), Sink("s2", "bob"), Sink("s3", "carol")
    channel = room_channel("tavern")
    broker.subscribe(channel, a)
    broker.subscribe(channel, b)
    broker.subscribe(player_channel("carol"), outside)
    broker.drop_turn_nowait(channel, "t9")
    assert a.dropped == b.dropped == ["t9"] and outside.dropped == []


async def test_publishing_to_an_empty_channel_is_harmless(broker: Broker) -> None:
    """A channel without subscribers swallows frames and creates no state."""
    broker.publish_nowait(room_channel("nobody"), Delta("t1", "x", 0))
    broker.drop_turn_nowait(room_channel("nobody"), "t1")
    assert broker.statistics().channels == 0
