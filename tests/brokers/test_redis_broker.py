"""The Redis broker across nodes: one real redis-server, two brokers as two nodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis

from npc_server.brokers import room_channel
from npc_server.brokers.redis import PREFIX, BrokerUnavailable, RedisBroker
from npc_server.protocol.frames import Delta, Presence, ServerFrame, TurnEnd
from tests.brokers.test_broker import Sink
from tests.support.redis import RedisServer, free_port
from tests.support.wait import wait_until

ROOM = room_channel("tavern")
WAIT = 10.0


@asynccontextmanager
async def nodes(redis: RedisServer) -> AsyncIterator[tuple[RedisBroker, RedisBroker]]:
    a, b = RedisBroker(redis.url, "node-a"), RedisBroker(redis.url, "node-b")
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_publication_reaches_other_nodes_once_and_its_own_node_once(
    redis: RedisServer,
) -> None:
    """Subscribers on both nodes get every frame once, in order; the echo is skipped."""
    async with nodes(redis) as (a, b):
        here, there = Sink("s1", "alice"), Sink("s2", "bob")
        a.subscribe(ROOM, here)
        b.subscribe(ROOM, there)
        await asyncio.wait_for(a.wait_subscribed(), WAIT)
        await asyncio.wait_for(b.wait_subscribed(), WAIT)
        frames = [Delta("t1", "hel", 0), Delta("t1", "lo", 3), TurnEnd("t1", "done", 5, 5)]
        for frame in frames:
            a.publish_nowait(ROOM, frame)
        await wait_until(lambda: len(there.frames) == 3, what="frames on node b")
        assert there.frames == frames and here.frames == frames
        # Written: the three frames and its announcement of interest in ROOM.
        await wait_until(lambda: a.redis_statistics().sent == 4, what="the batch written")
        assert b.redis_statistics().received == 3 and a.redis_statistics().received == 0


async def test_exclude_and_drops_cross_nodes(redis: RedisServer) -> None:
    """`exclude` holds on the other node, and an interrupt's drop reaches it too."""
    async with nodes(redis) as (a, b):
        alice_there, bob_there = Sink("s1", "alice"), Sink("s2", "bob")
        b.subscribe(ROOM, alice_there)
        b.subscribe(ROOM, bob_there)
        await asyncio.wait_for(b.wait_subscribed(), WAIT)
        a.publish_nowait(ROOM, Presence("tavern", "alice", "joined"), exclude="alice")
        a.drop_turn_nowait(ROOM, "t7")
        await wait_until(lambda: bob_there.dropped == ["t7"], what="the drop on node b")
        assert bob_there.frames == [Presence("tavern", "alice", "joined")]
        assert alice_there.frames == [] and alice_there.dropped == ["t7"]


async def test_a_node_that_unsubscribed_gets_nothing_more(redis: RedisServer) -> None:
    """After its last local subscriber leaves, a node's Redis subscription goes too."""
    async with nodes(redis) as (a, b):
        there = Sink("s2", "bob")
        b.subscribe(ROOM, there)
        await asyncio.wait_for(b.wait_subscribed(), WAIT)
        b.unsubscribe(ROOM, there)
        await asyncio.wait_for(b.wait_subscribed(), WAIT)
        probe = aioredis.Redis.from_url(redis.url)
        try:
            counts = await probe.pubsub_numsub(PREFIX + ROOM)
        finally:
            await probe.aclose()
        assert counts == [((PREFIX + ROOM).encode(), 0)]
        a.publish_nowait(ROOM, Delta("t1", "x", 0))
        await wait_until(lambda: a.redis_statistics().sent == 1, what="the publish")
        assert there.frames == [] and b.redis_statistics().received == 0


async def test_junk_in_redis_is_dropped_and_later_publications_still_arrive(
    redis: RedisServer,
) -> None:
    """Another version's or a truncated publication never reaches a session or crashes."""
    async with nodes(redis) as (a, b):
        there = Sink("s2", "bob")
        b.subscribe(ROOM, there)
        await asyncio.wait_for(b.wait_subscribed(), WAIT)
        probe = aioredis.Redis.from_url(redis.url)
        try:
            for junk in (b"\xc1", b"\x95\x02\xa1a\xa1f\xc0\x80", b"\x93\x01", b"plain text"):
                await probe.publish(PREFIX + ROOM, junk)
            wrong_type = (
                b"\x95\x01\xa1a\xa1f\xc0\x84\xa1t\xa5delta\xa4turn\xa1t\xa4text\x05\xa2at\x00"
            )
            await probe.publish(PREFIX + ROOM, wrong_type)
        finally:
            await probe.aclose()
        a.publish_nowait(ROOM, Delta("t1", "ok", 0))
        await wait_until(lambda: len(there.frames) == 1, what="the good publication")
        assert there.frames == [Delta("t1", "ok", 0)]
        assert b.redis_statistics().rejected == 5


async def test_redis_going_away_loses_no_local_delivery_and_resubscribes(
    redis: RedisServer,
) -> None:
    """Without Redis a node serves its own subscribers; when Redis is back, nodes resubscribe."""
    async with nodes(redis) as (a, b):
        here, there = Sink("s1", "alice"), Sink("s2", "bob")
        a.subscribe(ROOM, here)
        b.subscribe(ROOM, there)
        await asyncio.wait_for(b.wait_subscribed(), WAIT)
        redis.stop()
        await wait_until(lambda: not b.connected, what="node b noticing")
        a.publish_nowait(ROOM, Delta("t1", "alone", 0))
        assert here.frames == [Delta("t1", "alone", 0)]
        await wait_until(lambda: a.redis_statistics().lost >= 1, what="the lost publish")
        redis.start()
        await wait_until(lambda: a.connected and b.connected, timeout=20, what="reconnects")
        await asyncio.wait_for(b.wait_subscribed(), WAIT)
        a.publish_nowait(ROOM, Delta("t2", "back", 0))
        await wait_until(lambda: Delta("t2", "back", 0) in there.frames, what="delivery again")


async def test_an_unreachable_redis_refuses_to_start_with_the_url() -> None:
    """Start-up against a Redis that is not there fails with a message naming it."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    broker = RedisBroker(url, "node-a")
    with pytest.raises(BrokerUnavailable, match=r"cannot reach Redis at redis://127\.0\.0\.1"):
        await broker.start()


class Inbox:
    """A message handler that records what reaches it."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, object]]] = []

    def __call__(self, origin: str, message: dict[str, object]) -> None:
        self.got.append((origin, message))


async def test_a_message_reaches_the_node_it_names_and_no_other(redis: RedisServer) -> None:
    """`send_nowait` delivers to the named node's handler for its kind, with the sender."""
    async with nodes(redis) as (a, b):
        to_a, to_b = Inbox(), Inbox()
        a.on_message("hi", to_a)
        b.on_message("hi", to_b)
        await asyncio.wait_for(b.wait_subscribed(), WAIT)
        a.send_nowait("node-b", {"k": "hi", "n": 1})
        await wait_until(lambda: bool(to_b.got), what="the message at node b")
        assert to_b.got == [("node-a", {"k": "hi", "n": 1})] and to_a.got == []


async def test_a_signal_reaches_other_nodes_subscribed_to_its_channel(redis: RedisServer) -> None:
    """`signal_nowait` reaches the handlers of nodes that subscribe the channel, not its
    subscribers and not the sender."""
    async with nodes(redis) as (a, b):
        there, inbox_a, inbox_b = Sink("s2", "bob"), Inbox(), Inbox()
        a.on_message("who", inbox_a)
        b.on_message("who", inbox_b)
        b.subscribe(ROOM, there)
        a.subscribe(ROOM, Sink("s1", "alice"))
        await asyncio.wait_for(b.wait_subscribed(), WAIT)
        a.signal_nowait(ROOM, {"k": "who"})
        a.publish_nowait(ROOM, Delta("t1", "x", 0))  # after the signal, in order
        await wait_until(lambda: bool(there.frames), what="the frame after the signal")
        assert inbox_b.got == [("node-a", {"k": "who"})] and inbox_a.got == []
        assert there.frames == [Delta("t1", "x", 0)]


async def test_a_failing_or_unknown_message_is_counted_and_the_reader_goes_on(
    redis: RedisServer,
) -> None:
    """A handler that raises and a kind nobody handles are dropped; later frames arrive."""

    def broken(origin: str, message: dict[str, object]) -> None:
        raise KeyError("what a handler of bad input might raise")

    async with nodes(redis) as (a, b):
        there = Sink("s2", "bob")
        b.on_message("broken", broken)
        b.subscribe(ROOM, there)
        await asyncio.wait_for(b.wait_subscribed(), WAIT)
        a.send_nowait("node-b", {"k": "broken"})
        a.send_nowait("node-b", {"k": "nobody-handles-this"})
        a.publish_nowait(ROOM, Delta("t1", "x", 0))
        await wait_until(lambda: bool(there.frames), what="the frame after the bad messages")
        assert b.redis_statistics().rejected == 2


async def test_positions_say_which_publications_a_node_has_delivered(redis: RedisServer) -> None:
    """Each frame carries its origin's number; `position` is the last one delivered per
    origin, so two nodes can tell which frames both received."""
    async with nodes(redis) as (a, b):
        seen: list[tuple[str, int]] = []

        class Recorder(Sink):
            def push_nowait(self, frame: object) -> None:
                seen.append(b.delivering)

        b.subscribe(ROOM, Recorder("s2", "bob"))
        observed: list[tuple[str, str, object]] = []
        numbers: list[int] = []

        def observe(origin: str, number: int, channel: str, frame: object) -> bool:
            observed.append((origin, channel, frame))
            numbers.append(number)
            return frame != Delta("t1", "dropped", 1)

        b.observe_remote(observe)
        await asyncio.wait_for(b.wait_subscribed(), WAIT)
        a.publish_nowait(room_channel("elsewhere"), Delta("t0", "not for b", 0))
        a.publish_nowait(ROOM, Delta("t1", "x", 0))
        a.publish_nowait(ROOM, Delta("t1", "dropped", 1))  # the observer refuses this one
        a.publish_nowait(ROOM, Delta("t1", "y", 1))
        await wait_until(lambda: len(seen) == 2, what="both frames at node b")
        assert seen == [("node-a", 2), ("node-a", 4)]
        assert b.position()["node-a"] == 4 and a.position()["node-a"] == 4
        assert [frame for _, _, frame in observed] == [
            Delta("t1", "x", 0),
            Delta("t1", "dropped", 1),
            Delta("t1", "y", 1),
        ]
        assert {(origin, channel) for origin, channel, _ in observed} == {("node-a", ROOM)}
        assert numbers == [2, 3, 4]
        b.publish_nowait(ROOM, Delta("t2", "own", 0))
        # Own frames are not remote (b's number 1 was its announcement of interest in ROOM).
        assert seen[-1] == ("node-b", 2) and len(observed) == 3


async def test_a_subscription_racing_a_redis_drop_fails_instead_of_waiting(
    redis: RedisServer,
) -> None:
    """`when_subscribed` calls `failed`, not the callback, when Redis goes away before it
    confirms the subscription (a join then answers `unavailable` instead of hanging)."""
    async with nodes(redis) as (_, b):
        outcome: list[str] = []
        redis.stop()
        b.subscribe(room_channel("late"), Sink("s9", "bob"))
        b.when_subscribed(lambda: outcome.append("ok"), lambda: outcome.append("failed"))
        await wait_until(lambda: bool(outcome), what="an outcome")
        assert outcome == ["failed"]


def test_a_nodes_own_publications_are_known_by_their_first_bytes() -> None:
    """Every envelope of a node starts with its origin prefix; another node's does not."""
    from npc_server.brokers import wire

    mine = wire.origin_prefix("node-a")
    for data in (
        wire.encode_frame("node-a", Delta("t1", "x" * 300, 0), None, 1 << 40),
        wire.encode_drop("node-a", "t1", 7),
        wire.encode_message("node-a", {"k": "hi"}, 3),
    ):
        assert data.startswith(mine)
    assert not wire.encode_frame("node-ab", Delta("t1", "x", 0), None, 1).startswith(mine)
    assert not wire.encode_frame("node-b", Delta("t1", "x", 0), None, 1).startswith(mine)


async def test_closing_right_after_a_subscription_change_never_hangs(redis: RedisServer) -> None:
    """`aclose` ends every task of the broker even when it comes while a SUBSCRIBE or
    UNSUBSCRIBE is in flight (redis-py may swallow a cancel there)."""
    for index in range(10):
        broker = RedisBroker(redis.url, f"n{index}")
        await broker.start()
        await asyncio.wait_for(broker.wait_subscribed(), WAIT)
        sink = Sink("s1", "alice")
        broker.subscribe(ROOM, sink)
        await asyncio.sleep(0)  # let the subscription go out: the close races it
        broker.unsubscribe(ROOM, sink)
        await asyncio.wait_for(broker.aclose(), WAIT)
        left = [t for t in asyncio.all_tasks() if t.get_name().startswith("redis-broker")]
        assert not [t for t in left if not t.done()]


async def test_a_burst_of_commands_waits_for_a_connection_instead_of_failing(
    redis: RedisServer,
) -> None:
    """Hundreds of commands at once (a burst of connects: socket claims, catch-ups) queue for
    the node's pooled connections; none fails and the broker stays connected, publishing."""
    async with nodes(redis) as (a, b):
        there = Sink("s2", "bob")
        b.subscribe(ROOM, there)
        await asyncio.wait_for(b.wait_subscribed(), WAIT)
        burst = [a.client.incr("npc:test:burst") for _ in range(300)]
        a.publish_nowait(ROOM, Delta("t1", "during the burst", 0))
        answers = await asyncio.wait_for(asyncio.gather(*burst), WAIT)
        assert sorted(answers) == list(range(1, 301))
        await wait_until(lambda: len(there.frames) == 1, what="the publication on node b")
        assert a.connected and a.redis_statistics().lost == 0


async def test_publications_of_a_busy_node_share_writes(redis: RedisServer) -> None:
    """A publication after a quiet spell is written at once; those that follow within the
    flush window wait and go together, in order, in one write."""
    async with nodes(redis) as (a, b):
        there = Sink("s2", "bob")
        b.subscribe(ROOM, there)
        await asyncio.wait_for(b.wait_subscribed(), WAIT)
        a.flush_window = 0.5  # far longer than the loop iterations below
        frames = [Delta("t1", f"w{n}", n) for n in range(20)]
        for frame in frames:
            a.publish_nowait(ROOM, frame)
            await asyncio.sleep(0)  # each in its own loop iteration
        await wait_until(lambda: len(there.frames) == 20, what="every frame on node b")
        assert there.frames == frames
        assert a.redis_statistics().batches == 2  # the first alone, then the other 19


async def test_available_after_a_restart_means_the_subscriptions_are_back(
    redis: RedisServer,
) -> None:
    """A node reports itself available again only once Redis has its subscriptions back, so
    what another node publishes from then on reaches its sessions."""
    async with nodes(redis) as (a, b):
        here = Sink("s1", "alice")
        a.subscribe(ROOM, here)
        await asyncio.wait_for(a.wait_subscribed(), WAIT)
        redis.stop()
        await wait_until(lambda: not a.available, what="node a unavailable")
        redis.start()
        await wait_until(lambda: a.available and b.available, timeout=20, what="both back")
        b.publish_nowait(ROOM, Delta("t1", "after the restart", 0))
        await wait_until(lambda: bool(here.frames), what="the frame on node a")
        assert here.frames == [Delta("t1", "after the restart", 0)]


class Exploding(Sink):
    """A subscriber with a bug: it raises on one frame."""

    def push_nowait(self, frame: ServerFrame) -> None:
        if isinstance(frame, Delta) and frame.text == "boom":
            raise RuntimeError("a bug in a subscriber")
        super().push_nowait(frame)


@pytest.mark.server_errors  # the failing delivery is logged with its traceback, as a bug
async def test_a_delivery_that_fails_is_counted_and_the_subscription_goes_on(
    redis: RedisServer,
) -> None:
    """A publication whose local delivery raises is counted as rejected; the ones after it
    in the same read still arrive, and the node stays connected."""
    async with nodes(redis) as (a, b):
        there = Exploding("s2", "bob")
        b.subscribe(ROOM, there)
        await asyncio.wait_for(b.wait_subscribed(), WAIT)
        a.publish_nowait(ROOM, Delta("t1", "boom", 0))
        a.publish_nowait(ROOM, Delta("t1", "after", 1))
        await wait_until(lambda: len(there.frames) == 1, what="the frame after")
        assert there.frames == [Delta("t1", "after", 1)]
        assert b.redis_statistics().rejected == 1 and b.connected


async def test_new_redis_connections_name_the_client_without_reading_package_metadata(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of commands opens pooled connections (the broker's and the memory
    store's): each names redis-py and its version for `CLIENT SETINFO` (Redis 7.2 on)
    from what was given once, instead of reading the package's metadata from disk for
    every connection."""
    import redis as redis_py
    from redis import utils as redis_utils

    from npc_server.memories.redis import RedisMemoryStore

    def read_from_disk() -> str:
        raise AssertionError("a connection looked up redis-py's version on disk")

    monkeypatch.setattr(redis_utils, "get_lib_version", read_from_disk)
    broker, store = RedisBroker(redis.url, "node-a"), RedisMemoryStore(redis.url, 60.0)
    await broker.start()
    try:
        await asyncio.gather(*(broker.client.ping() for _ in range(8)))
        assert not await store.load("guard", "player:alice")  # nothing saved: empty
        pools = [broker.client.connection_pool, store._client().connection_pool]
        assert sum(len(p._available_connections) for p in pools) >= 3  # the pool grew
        for pool in pools:
            info = pool.connection_kwargs["driver_info"]
            assert (info.name, info.lib_version) == ("redis-py", redis_py.__version__)
    finally:
        await store.aclose()
        await broker.aclose()


def test_a_redis_py_without_driver_info_gets_no_such_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """redis-py before 7.2 has no `redis.driver_info` (and reads its version once, at
    import): the pools are made without the option, which it would refuse."""
    import sys

    from npc_server.brokers import redis as broker_module

    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "redis.driver_info", None)  # its import raises
        broker_module._driver_info.cache_clear()
        try:
            assert broker_module.client_options() == {}
        finally:
            broker_module._driver_info.cache_clear()
    assert set(broker_module.client_options()) == {"driver_info"}  # this redis-py has it


def test_a_failed_batch_never_lowers_the_gap_a_later_lost_publication_recorded() -> None:
    """Publication 12 on a channel is lost while the link is down, then the batch that
    carried publication 10 fails: the gap other nodes are told must reach 12, or they
    would take 11 and 12 as delivered (a relayed turn left running on a lost frame)."""
    from npc_server.brokers.redis_publisher import PublishRefused

    broker = RedisBroker("redis://127.0.0.1:1/0", "node-a")  # never started: no Redis
    told: list[tuple[str, dict[str, object]]] = []
    broker.signal_nowait = lambda channel, message: told.append((channel, dict(message)))  # type: ignore[method-assign]
    broker._number = 12
    broker._queue(ROOM, b"twelve")  # not connected: lost, recorded with its number
    broker._publications_lost([(PREFIX + ROOM, 10)], PublishRefused("full"))
    broker._report_gaps()
    assert told == [(ROOM, {"k": "gap", "channel": ROOM, "upto": 12})]
