"""Room talk lost while Redis was away is never replayed across: nodes in this process,
each with its part in the cluster started, on a real redis-server."""

from __future__ import annotations

from npc_server.brokers.redis import RedisBroker
from npc_server.brokers.redis_publisher import PublishRefused
from npc_server.node import Node
from npc_server.protocol.frames import Ack, Delta
from tests.cluster.test_api_forwarded import started
from tests.support.redis import RedisServer
from tests.support.wait import wait_until


def broker(node: Node) -> RedisBroker:
    found = node.broker
    assert isinstance(found, RedisBroker)
    return found


async def test_a_socket_that_leaves_while_redis_is_away_is_not_resumed_across_it(
    redis: RedisServer,
) -> None:
    """Alice's socket closes during the outage and she resumes on the same node before
    Redis is back: what other nodes said in her room meanwhile never reached her queue,
    so the resume is refused (a new session and a snapshot)."""
    async with started(redis, "b") as (b,):
        alice = b.open_session("alice")
        owner = object()
        alice.attach(owner, lambda: None, lambda code: None)
        b.hub.join("inn", "alice", quiet=True)
        for n in range(3):
            alice.push_nowait(Ack(n + 1))
        alice.take_writes_nowait(b.clock())
        redis.stop()
        try:
            await wait_until(lambda: not broker(b).connected, what="the link to drop")
            b.detach_session(alice, owner, resumable=True)
            alice.push_nowait(Delta("t9", "said here", 0))
            assert alice.replay_after(3) is None
        finally:
            redis.start()


async def test_room_talk_refused_by_redis_marks_the_members_on_other_nodes(
    redis: RedisServer,
) -> None:
    """A publication Redis refused (the link stays up) is reported as a gap at once: the
    room's members on the other node are marked, so a resume from before it is refused."""
    async with started(redis, "p", "q") as (p, q):
        bob = q.open_session("bob")
        q.hub.join("inn", "bob", quiet=True)
        p.hub.join("inn", "carol", quiet=True)
        await broker(q).wait_subscribed()
        lost = [("npc:room:inn", broker(p)._number)]
        broker(p)._publications_lost(lost, PublishRefused("BUSY"))
        await wait_until(lambda: bob.holed_at > 0, what="bob's mark")
        assert bob.replay_after(0) is None
