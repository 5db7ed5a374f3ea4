"""The handover between two nodes in this process, on a real redis-server: dedup in the flow."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis

from npc_server.api import _kick_here
from npc_server.brokers.redis import RedisBroker
from npc_server.cluster import handover
from npc_server.cluster.answers import merged_sessions
from npc_server.cluster.handover import Kicked
from npc_server.node import Node
from npc_server.npcs import load_npcs
from npc_server.protocol.frames import Ack, Delta, Resume
from npc_server.session import Session
from tests.cluster.test_api_forwarded import started
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


@asynccontextmanager
async def nodes(redis: RedisServer, *names: str) -> AsyncIterator[tuple[Node, ...]]:
    """Nodes in this process whose brokers are on Redis (their handovers talk there)."""
    config, npcs = server_config(), load_npcs(DEMO_NPCS)
    made = tuple(Node(config, npcs, broker=RedisBroker(redis.url, n)) for n in names)
    for node in made:
        await node.broker.start()
    try:
        yield made
    finally:
        for node in made:
            await node.broker.wait_subscribed()  # type: ignore[attr-defined]
            await node.broker.aclose()


def adopt(node: Node, session: Session) -> None:
    """As if a draining node "x" named `session` to `node`."""
    message = {"k": "handover.adopt", "sessions": [[session.id, session.player, 0]]}
    node.handover._on_adopt("x", message)


def hold(node: Node, kind: str, origin: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Hold back `node`'s handover messages of `kind` (from `origin`); release them by
    calling the handler the test kept."""
    held: list[tuple[str, dict[str, Any]]] = []
    handler = getattr(node.handover, f"_on_{kind.removeprefix('handover.')}")

    def holding(sender: str, message: dict[str, Any]) -> None:
        if origin is None or sender == origin:
            held.append((sender, message))
        else:
            handler(sender, message)

    node.broker.on_message(kind, holding)
    return held


async def test_a_players_resume_on_the_adopting_node_waits_for_the_adoption(
    redis: RedisServer,
) -> None:
    """Alice reconnects to C while C takes her session from draining X: her resume waits
    for it and then finds it held on C (the caller's own resume replays it)."""
    async with nodes(redis, "x", "c") as (x, c):
        session = detached_with_written(x, 3)
        adopt(c, session)
        assert await c.handover.resume("alice", Resume(session.id, 3)) is None
        held = c.find_resumable("alice", session.id)
        assert held is not None and held.replay_after(3) == []
        assert x.hub.get(session.id) is None


async def test_a_players_resume_elsewhere_beats_an_adoption_for_the_same_session(
    redis: RedisServer,
) -> None:
    """Alice's resume on B got X's offer first: C's take for the drain is refused, and B's
    take gets the session."""
    async with nodes(redis, "x", "b", "c") as (x, b, c):
        session = detached_with_written(x, 3)
        takes = hold(x, "handover.take", origin="b")
        resuming = asyncio.create_task(b.handover.resume("alice", Resume(session.id, 3)))
        await wait_until(lambda: bool(takes), what="B's take")
        adopt(c, session)
        await wait_until(lambda: not c.handover._adoptions, what="C's adoption")
        assert c.hub.get(session.id) is None and x.hub.get(session.id) is not None
        x.handover._on_take(*takes[0])
        handed = await resuming
        assert handed is not None and handed[0].id == session.id


async def test_an_ask_for_a_session_being_adopted_is_answered_once_it_is(
    redis: RedisServer,
) -> None:
    """X has handed alice's session to C, whose state is on its way, when alice's resume
    reaches B: C answers B's ask once the session is installed, and B gets it."""
    async with nodes(redis, "x", "b", "c") as (x, b, c):
        session = detached_with_written(x, 3)
        states = hold(c, "handover.state")
        adopt(c, session)
        await wait_until(lambda: bool(states), what="X's state for C")
        resuming = asyncio.create_task(b.handover.resume("alice", Resume(session.id, 3)))
        await wait_until(lambda: bool(c.handover._deferred), what="B's ask, deferred by C")
        c.handover._on_state(*states[0])
        handed = await resuming
        assert handed is not None and handed[0].id == session.id
        assert c.hub.get(session.id) is None  # C handed it on


async def test_a_node_that_drains_mid_adoption_keeps_the_session_it_takes(
    redis: RedisServer,
) -> None:
    """C starts draining while it takes alice's session: its own drain waits for that,
    then parks it in Redis (no node to hand it to): it is never on no node."""
    async with nodes(redis, "x", "c") as (x, c):
        session = detached_with_written(x, 3)
        states = hold(c, "handover.state")
        adopt(c, session)
        await wait_until(lambda: bool(states), what="X's state for C")
        c.draining = True

        async def drain() -> int:  # as the drain's end does: hand over, then park
            await c.handover.hand_over_all()
            return await c.handover.park_all()

        draining = asyncio.create_task(drain())
        # Runs after the drain's first step: the state arrives while it is under way.
        asyncio.get_running_loop().call_soon(c.handover._on_state, *states[0])
        assert await draining == 1
        client = c.handover._client()
        assert await client.exists(f"npc:handover:{session.id}") == 1


async def test_a_players_resume_that_gave_up_does_not_keep_the_drain_from_handing_over(
    redis: RedisServer,
) -> None:
    """Alice's resume on B got X's offer and then gave up: the drain's first take is
    refused for it, and its second, once that offer is stale, hands her session on."""
    async with started(redis, "x", "b", "c") as (x, b, c):
        session = detached_with_written(x, 3)
        offers = hold(b, "handover.offer")
        resuming = asyncio.create_task(b.handover.resume("alice", Resume(session.id, 3)))
        await wait_until(lambda: bool(offers), what="X's offer to B")
        resuming.cancel()
        await asyncio.gather(resuming, return_exceptions=True)
        b.broker.on_message("handover.offer", b.handover._on_offer)  # offers reach B again
        assert await x.handover.hand_over_all() == 1
        assert x.hub.get(session.id) is None
        await wait_until(  # the state is on its way to the node that took it
            lambda: (b.hub.get(session.id) or c.hub.get(session.id)) is not None,
            what="the session on B or C",
        )
        assert b.handover.stats.adopted + c.handover.stats.adopted == 1


async def test_a_resume_across_a_redis_outage_on_the_new_node_is_a_snapshot(
    redis: RedisServer,
) -> None:
    """B's link to Redis drops after X exported alice's session and before B installs
    it: what was published for her meanwhile may be missing from B's stand-in, so B
    does not replay across that (a new session and a snapshot instead of a gap)."""
    async with started(redis, "x", "b") as (x, b):
        session = detached_with_written(x, 3)
        b.handover.timeout = 30.0  # the outage, not the bound, decides here
        states = hold(b, "handover.state")
        links: list[bool] = []
        b.broker.add_state_listener(links.append)  # type: ignore[attr-defined]
        resuming = asyncio.create_task(b.handover.resume("alice", Resume(session.id, 1)))
        await wait_until(lambda: bool(states), what="X's state for B")
        assert x.hub.get(session.id) is None  # exported: only the state holds it now
        async with aioredis.Redis.from_url(redis.url) as raw:
            await raw.client_kill_filter(_type="pubsub")  # every node's subscriber link
        await wait_until(lambda: links[-2:] == [False, True], what="B's link lost and back")
        b.handover._on_state(*states[0])
        assert await resuming is None
        assert b.handover.stats.snapshots == 1 and b.handover.stats.timeouts == 0
        assert b.hub.get(session.id) is None


def held_by(node: Node, player: str) -> Session:
    """A detached session of `player` on `node`, as a drain finds one."""
    session = node.open_session(player)
    session.detach(node.clock())
    return session


@pytest.fixture
def endless_adopt_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """A drain's adopt rounds would outlast every test: only an answer ends them."""
    monkeypatch.setattr(handover, "ADOPT_WAIT", 3600.0)


async def drained(node: Node) -> int:
    """The drain's handover step (`hand_over_all`), bounded far below an adopt round."""
    return await asyncio.wait_for(node.handover.hand_over_all(), timeout=20)


@pytest.mark.usefixtures("endless_adopt_wait")
async def test_when_every_node_drains_none_waits_for_the_others_to_adopt(
    redis: RedisServer,
) -> None:
    """X and B drain at once (`--workers 2` stopping, a restart of every node): B declines
    X's adopt, so X parks its sessions at once instead of waiting out both rounds."""
    async with started(redis, "x", "b") as (x, b):
        session = held_by(x, "alice")
        x.draining = b.draining = True
        assert await drained(x) == 0
        assert x.hub.get(session.id) is session and b.hub.get(session.id) is None
        assert await x.handover.park_all() == 1


@pytest.mark.usefixtures("endless_adopt_wait")
async def test_what_a_draining_node_declines_goes_to_a_live_one(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """X asks B for one session and C for the other; B drains too and declines, so C
    takes both."""
    monkeypatch.setattr(handover, "ADOPT_BATCH", 1)
    async with started(redis, "x", "b", "c") as (x, b, c):
        sessions = [held_by(x, "alice"), held_by(x, "bob")]
        b.draining = x.draining = True
        assert await drained(x) == 2
        await wait_until(lambda: c.handover.stats.adopted == 2, what="C's adoptions")
        assert all(c.hub.get(s.id) is not None for s in sessions)
        assert b.handover.stats.adopted == 0


async def drain_with_adopts_held(
    x: Node, b: Node
) -> tuple[asyncio.Task[int], list[tuple[str, dict[str, Any]]]]:
    """X drains (its handover step, as a task) and its adopt has reached B, held there."""
    adopts = hold(b, "handover.adopt")
    x.draining = True
    draining = asyncio.create_task(drained(x))
    await wait_until(lambda: bool(adopts), what="X's adopt at B")
    return draining, adopts


@pytest.mark.usefixtures("endless_adopt_wait")
async def test_a_session_ending_during_the_drain_is_not_waited_for(redis: RedisServer) -> None:
    """B is slow to adopt alice's session and a kick ends it on X meanwhile: X's drain
    stops waiting for it then, not at the round's end."""
    async with started(redis, "x", "b") as (x, b):
        session = held_by(x, "alice")
        draining, _ = await drain_with_adopts_held(x, b)  # B never answers
        x.end_session(session)  # as a kick, an expiry or a replacing socket does
        assert await draining == 0  # none handed over: it ended here
        assert x.hub.get(session.id) is None


async def test_a_drain_parks_no_session_whose_resume_could_not_be_served(
    redis: RedisServer,
) -> None:
    """Alice's session left its socket while Redis was away (frames may be lost from its
    queue): no resume of it can be served, so a drain neither hands it over nor parks it
    (her resume elsewhere gets a new session and a snapshot either way); bob's goes to B."""
    async with started(redis, "x", "b") as (x, b):
        holed, kept = held_by(x, "alice"), held_by(x, "bob")
        holed.mark_hole()
        x.draining = True
        assert await drained(x) == 1
        await wait_until(lambda: b.handover.stats.adopted == 1, what="B's adoption")
        assert b.hub.get(kept.id) is not None and b.hub.get(holed.id) is None
        assert await x.handover.park_all() == 0
        assert await x.handover._client().exists(f"npc:handover:{holed.id}") == 0


@pytest.mark.usefixtures("endless_adopt_wait")
async def test_a_decline_names_its_sessions_and_the_drain_waits_for_the_others(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """X asks B for alice, then for bob; B takes alice, starts draining, and declines bob
    only: X parks bob and still waits for B to take alice."""
    monkeypatch.setattr(handover, "ADOPT_BATCH", 1)
    async with started(redis, "x", "b") as (x, b):
        alice, bob = held_by(x, "alice"), held_by(x, "bob")
        adopts = hold(b, "handover.adopt")
        x.draining = True
        draining = asyncio.create_task(drained(x))
        await wait_until(lambda: len(adopts) == 2, what="X's two adopts at B")
        b.handover._on_adopt(*adopts[0])  # alice's: B is live and takes it
        b.draining = True
        b.handover._on_adopt(*adopts[1])  # bob's: B drains now and declines it
        assert await draining == 1
        await wait_until(lambda: b.hub.get(alice.id) is not None, what="alice's on B")
        assert x.hub.get(bob.id) is bob and x.hub.get(alice.id) is None
        assert await x.handover.park_all() == 1


@pytest.mark.usefixtures("endless_adopt_wait")
async def test_forged_declines_neither_stop_nor_break_a_drain(redis: RedisServer) -> None:
    """A decline from a node X never asked, and one whose sessions are not ids, change
    nothing (the second is counted as rejected); B's real answer still ends the drain."""
    async with started(redis, "x", "b") as (x, b):
        session = held_by(x, "alice")
        draining, adopts = await drain_with_adopts_held(x, b)
        x.handover._on_decline("ghost", {"k": "handover.decline", "sessions": [session.id]})
        for bad in (None, "s-1", [1, 2], [""], ["s" * 500]):
            x.handover._on_decline("b", {"k": "handover.decline", "sessions": bad})
        assert x.handover.stats.rejected == 5
        drain = x.handover._drain
        assert drain is not None and drain.outstanding == {session.id} and not drain.declined
        b.draining = True
        b.handover._on_adopt(*adopts[0])  # B drains too: its real decline
        assert await draining == 0 and x.hub.get(session.id) is session


async def test_a_kick_counts_a_parked_session_once(redis: RedisServer) -> None:
    """Once parked, a drained node's sessions are only in Redis: a kick there counts them
    once (the node's own count and the parked ones together)."""
    async with nodes(redis, "x") as (x,):
        detached_with_written(x, 3)
        assert await x.handover.park_all() == 1
        here = _kick_here(x, "alice")
        assert merged_sessions([here], await x.handover.forget_parked("alice")) == 1


async def test_a_parked_session_is_listed_until_a_node_resumes_it(redis: RedisServer) -> None:
    """Once X drained and parked alice's session, a listing shows it (its id and last seq)
    until B resumes it; a kick's drop also ends the listing."""
    async with nodes(redis, "x", "b") as (x, b):
        first = detached_with_written(x, 3)
        assert await x.handover.park_all() == 1
        parked = [{"session": first.id, "state": "parked", "last_seq": 3}]
        assert await b.handover.list_parked("alice") == parked
        assert await b.handover.list_parked("bob") == []
        assert await b.handover.resume("alice", Resume(first.id, 3)) is not None
        assert await b.handover.list_parked("alice") == []  # its state left Redis with it
        b.end_session(b.hub.get(first.id))  # type: ignore[arg-type]
        second = detached_with_written(x, 2)
        assert await x.handover.park_all() == 1
        assert [s["session"] for s in await b.handover.list_parked("alice")] == [second.id]
        assert await b.handover.forget_parked("alice") == [second.id]
        assert await b.handover.list_parked("alice") == []
        # Another version's or a stray entry is left out, never a crash.
        client = b.broker.client  # type: ignore[attr-defined]
        for session in ("odd", "old", "gone"):  # old: parked by an older node (no seq)
            await client.sadd("npc:parked:alice", session)
        for session in ("odd", "old"):
            await client.set(f"npc:handover:{session}", b"x")
        await client.hset("npc:parked-seq:alice", mapping={"odd": "²", "gone": "4"})
        assert await b.handover.list_parked("alice") == []
        await client.hset("npc:parked-seq:alice", "odd", "9" * 5000)
        assert await b.handover.list_parked("alice") == []
        assert sorted(await b.handover.forget_parked("alice")) == ["odd", "old"]  # all
        assert await client.exists("npc:parked:alice", "npc:parked-seq:alice") == 0
        # Keys of the wrong type: listed as nothing, dropped by a kick.
        await client.set("npc:parked:alice", b"stray")
        await client.set("npc:parked-seq:bob", b"stray")
        await client.sadd("npc:parked:bob", "odd")
        await client.set("npc:handover:odd", b"x")  # a state the kick drops, unlisted
        for player in ("alice", "bob"):
            assert await b.handover.list_parked(player) == []
            assert await b.handover.forget_parked(player) == (["odd"] if player == "bob" else [])
        assert await client.exists("npc:parked:alice", "npc:parked-seq:bob") == 0


async def test_a_stray_key_beside_the_parked_lists_does_not_stop_a_drain_parking(
    redis: RedisServer,
) -> None:
    """`npc:parked-seq:alice` is a string (a stray): the drain still parks her session
    (its state is written and the session ends here), and a resume on B finds it."""
    async with nodes(redis, "x", "b") as (x, b):
        await b.broker.client.set("npc:parked-seq:alice", b"stray")  # type: ignore[attr-defined]
        session = detached_with_written(x, 3)
        assert await x.handover.park_all() == 1
        assert x.hub.get(session.id) is None and x.handover.stats.parked == 1
        assert await b.handover.resume("alice", Resume(session.id, 3)) is not None


async def test_a_kick_ends_a_session_on_its_way_to_this_node(redis: RedisServer) -> None:
    """Alice's session is being handed from X to B when a kick reaches B (X had already
    let it go): B counts it, and the resume ends refused with the kick's code, 4508."""
    async with nodes(redis, "x", "b") as (x, b):
        session = detached_with_written(x, 3)
        states = hold(b, "handover.state")
        resuming = asyncio.create_task(b.handover.resume("alice", Resume(session.id, 3)))
        await wait_until(lambda: bool(states), what="X's state for B")
        assert _kick_here(b, "alice") == {"sessions": 1, "sockets": 0, "ids": [session.id]}
        b.handover._on_state(*states[0])
        with pytest.raises(Kicked):  # the socket's hello refuses it with 4508
            await resuming
        assert b.hub.get(session.id) is None and x.hub.get(session.id) is None


async def test_a_kick_counts_a_session_on_its_way_between_two_nodes_once(
    redis: RedisServer,
) -> None:
    """B asked X for alice's session and X has not answered yet when the kick reaches
    both: X still holds it, B waits for it, each ends it, and the kick counts it once."""
    async with nodes(redis, "x", "b") as (x, b):
        session = detached_with_written(x, 3)
        asks = hold(x, "handover.ask")
        resuming = asyncio.create_task(b.handover.resume("alice", Resume(session.id, 3)))
        await wait_until(lambda: bool(asks), what="B's ask at X")
        counts = [_kick_here(x, "alice"), _kick_here(b, "alice")]
        assert [c["sessions"] for c in counts] == [1, 1]  # both count it
        assert merged_sessions(counts) == 1
        assert merged_sessions([*counts, {"sessions": 2, "sockets": 0, "ids": None}]) == 3
        resuming.cancel()
        with contextlib.suppress(asyncio.CancelledError, Kicked):
            await resuming
        assert x.hub.get(session.id) is None and b.hub.get(session.id) is None


async def test_a_kick_during_an_adoption_refuses_the_resume_that_waited_for_it(
    redis: RedisServer,
) -> None:
    """Alice's resume on C waits for C's adoption of her session when a kick reaches C:
    the adoption drops it and her resume is refused (4508), not given a new session."""
    async with nodes(redis, "x", "c") as (x, c):
        session = detached_with_written(x, 3)
        states = hold(c, "handover.state")
        adopt(c, session)
        await wait_until(lambda: bool(states), what="X's state for C")
        waiting = asyncio.create_task(c.handover.resume("alice", Resume(session.id, 3)))
        _kick_here(c, "alice")
        c.handover._on_state(*states[0])
        with pytest.raises(Kicked):
            await waiting
        assert c.hub.get(session.id) is None and x.hub.get(session.id) is None


async def test_an_adoption_whose_session_never_arrives_is_counted(redis: RedisServer) -> None:
    """X asks B to adopt a session no node holds any more (it ended meanwhile): B counts
    it in `not_adopted`, not in a player's resume figures, and holds nothing."""
    async with nodes(redis, "x", "b") as (_, b):
        adopt_message = {"k": "handover.adopt", "sessions": [["s-gone-1", "alice", 0]]}
        b.handover._on_adopt("x", adopt_message)
        await wait_until(lambda: b.handover.stats.not_adopted == 1, what="the failed adoption")
        stats = b.handover.stats
        assert (stats.adopted, stats.asked, stats.snapshots) == (0, 0, 0)
        assert b.hub.get("s-gone-1") is None
