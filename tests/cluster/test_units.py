"""The cluster's parts on their own: relayed-turn tracking, leases on a real Redis,
ids and validation of what other nodes send."""

from __future__ import annotations

import types
from typing import Any

import pytest
import redis.asyncio as aioredis

from npc_server.api import _check_turn_node_alive
from npc_server.api_schema import ApiError
from npc_server.cluster.forward import owner_of
from npc_server.cluster.leases import Leases, alive_key, owner_key
from npc_server.cluster.remote_turns import RemoteTurn, RemoteTurns
from npc_server.protocol.frames import Action, Delta, ServerFrame, TurnEnd, TurnStart
from tests.support.redis import RedisServer


class Local:
    def __init__(self) -> None:
        self.frames: list[tuple[str, ServerFrame]] = []

    def __call__(self, channel: str, frame: ServerFrame) -> None:
        self.frames.append((channel, frame))


def started(turns: RemoteTurns, turn: str, origin: str = "a", number: int = 1) -> None:
    assert turns.observe(origin, number, "room:inn", TurnStart(turn, "guard", "carol", "inn"))


def test_a_dead_nodes_turns_end_with_what_reached_this_node() -> None:
    """Ending a dead origin's turns delivers turn.end{error} with the relayed chars as kept,
    reports them for the memory cut, and drops their late frames; other origins go on."""
    local, orphaned = Local(), list[RemoteTurn]()
    turns = RemoteTurns(local, orphaned.append)
    started(turns, "t-a-1", "a")
    started(turns, "t-b-1", "b")
    assert turns.observe("a", 2, "room:inn", Delta("t-a-1", "Hello", 0))
    assert turns.observe("a", 3, "room:inn", Delta("t-a-1", " there", 5))
    [ended] = turns.end_from({"a"})
    assert ended.text == "Hello there" and [t.id for t in orphaned] == ["t-a-1"]
    assert local.frames == [("room:inn", TurnEnd("t-a-1", "error", 11, 11))]
    assert not turns.observe("a", 4, "room:inn", Delta("t-a-1", "late", 11))
    assert not turns.observe("a", 5, "room:inn", TurnEnd("t-a-1", "done", 15, 15))
    assert not turns.observe("a", 6, "room:inn", Action("t-a-1", "x", "wave", {}, 0, False))
    assert turns.observe("b", 2, "room:inn", Delta("t-b-1", "fine", 0))
    assert turns.origins() == {"b"}


def test_a_gap_ends_only_turns_started_before_it() -> None:
    """A gap report up to number n ends the origin's turns on that channel started at or
    before n, not later ones, not other channels'."""
    local = Local()
    turns = RemoteTurns(local)
    started(turns, "t-a-1", "a", number=3)
    started(turns, "t-a-2", "a", number=9)
    assert turns.observe("a", 4, "room:hall", TurnStart("t-a-3", "guard", "carol", "hall"))
    assert [t.id for t in turns.end_on("a", "room:inn", upto=5)] == ["t-a-1"]
    assert {t for t in ("t-a-2", "t-a-3") if turns.get(t)} == {"t-a-2", "t-a-3"}


def test_a_turn_that_ends_normally_is_forgotten_and_its_frames_flow() -> None:
    """turn.end closes a relayed turn; a lost link ends every open one exactly once."""
    local = Local()
    turns = RemoteTurns(local)
    started(turns, "t-a-1")
    assert turns.observe("a", 2, "room:inn", TurnEnd("t-a-1", "done", 0, 0))
    started(turns, "t-a-2", number=3)
    assert turns.newest_started_by("carol") is turns.get("t-a-2")
    assert turns.written_on("room:inn") == {"t-a-2": 0}
    assert [t.id for t in turns.end_all()] == ["t-a-2"] and turns.end_all() == []
    assert len(local.frames) == 1 and len(turns) == 0


def test_ids_name_the_node_that_made_them() -> None:
    """A turn or action id names its node; anything else names none."""
    assert owner_of("t-1c40e0-12") == "1c40e0" and owner_of("a-ff00aa-3") == "ff00aa"
    assert owner_of("not-an-id-at-all") is None and owner_of("t--1") is None


async def test_one_owner_per_conversation_until_its_node_dies(redis: RedisServer) -> None:
    """The first claim wins; others are told the owner while its lease lives; after the
    owner's lease lapses the next claim takes over; release only deletes one's own key."""
    client_a = aioredis.Redis.from_url(redis.url)
    client_b = aioredis.Redis.from_url(redis.url)
    a, b = Leases(client_a, "aaa"), Leases(client_b, "bbb")
    try:
        await a.start()
        await b.start()
        assert await a.claim("guard", "player:alice") == "aaa"
        assert await b.claim("guard", "player:alice") == "aaa"
        assert await b.dead({"aaa", "ccc"}) == {"ccc"}
        await client_a.delete(alive_key("aaa"))  # as if its lease ran out
        assert await b.dead({"aaa"}) == {"aaa"}
        assert await b.claim("guard", "player:alice") == "bbb"
        a.release_nowait("guard", "player:alice")  # not a's any more: kept
        await a.aclose()
        assert await client_b.get(owner_key("guard", "player:alice")) == b"bbb"
        b.release_nowait("guard", "player:alice")
        await b.aclose()
        assert await client_b.get(owner_key("guard", "player:alice")) is None
        assert await client_b.exists(alive_key("bbb")) == 0  # a node that stops says so
    finally:
        await client_a.aclose()
        await client_b.aclose()


def test_a_say_queued_on_a_dead_node_ends_for_its_speaker() -> None:
    """An ack with a queue position from another node is followed: if that node dies
    before the turn starts, its speaker gets turn.end{error} with nothing said."""
    from npc_server.protocol.frames import Ack

    local = Local()
    turns = RemoteTurns(local)
    assert turns.observe("a", 1, "session:s1", Ack(7, turn="t-a-5", queued=1))
    assert turns.observe("a", 2, "session:s1", Ack(8, turn="t-a-6", queued=2))
    started(turns, "t-a-5", number=3)  # the first one started: followed as a turn now
    assert turns.queued_from() == {"a"}
    turns.end_from({"a"})
    assert ("session:s1", TurnEnd("t-a-6", "error", 0, 0)) in local.frames
    assert ("room:inn", TurnEnd("t-a-5", "error", 0, 0)) in local.frames
    assert turns.queued_from() == set()


async def test_a_stray_owner_key_is_taken_over(redis: RedisServer) -> None:
    """An owner key that is not ours (another type, or naming no live node) never blocks
    a claim: the claimer takes it."""
    client = aioredis.Redis.from_url(redis.url)
    leases = Leases(client, "aaa")
    try:
        await leases.start()
        await client.rpush(owner_key("guard", "room:inn"), "junk")
        await client.set(owner_key("guard", "player:bob"), b"\xff\x00 not a node")
        assert await leases.claim("guard", "room:inn") == "aaa"
        assert await leases.claim("guard", "player:bob") == "aaa"
        await leases.aclose()
    finally:
        await client.aclose()


def test_a_turn_under_way_is_followed_on_a_channel_a_moving_session_adopts() -> None:
    """Deltas of a turn whose start this node never saw are dropped, unless a session
    moving here (a handover) listens on that channel: then they pass and are followed."""
    turns = RemoteTurns(Local())
    assert not turns.observe("a", 5, "player:alice", Delta("t-a-1", "lo", 3))
    turns.adopt("player:alice")
    assert turns.observe("a", 6, "player:alice", Delta("t-a-1", " there", 5))
    turns.release("player:alice")
    assert turns.observe("a", 7, "player:alice", Delta("t-a-1", "!", 11))
    assert turns.get("t-a-1") is not None and turns.written_on("player:alice") == {"t-a-1": 12}
    assert not turns.observe("a", 8, "player:alice", Delta("t-a-2", "new", 3))


def test_a_turn_missed_at_its_start_is_reported_then_caught_up_once() -> None:
    """A delta or action of a turn never seen starting is dropped and reported (its node is
    asked); the start and text its node sends back are delivered once, and its next
    deltas flow; a catch-up for a turn followed already, or on another channel, is not."""
    missed: list[tuple[str, str, str]] = []
    turns = RemoteTurns(Local(), on_missing=lambda *m: missed.append(m))
    assert not turns.observe("a", 7, "room:inn", Delta("t-a-1", "lo", 3))
    assert not turns.observe("a", 8, "room:inn", Action("t-a-1", "x", "wave", {}, 5, False))
    assert not turns.observe("a", 9, "session:s-b-1", Delta("t-a-9", "own", 0))
    assert missed == [("a", "room:inn", "t-a-1")] * 2
    start = TurnStart("t-a-1", "guard", "carol", "inn")
    assert turns.caught_up("a", "room:hall", [start, Delta("t-a-1", "hello", 0)]) == []
    frames = [start, Delta("t-a-1", "hello", 0), Delta("t-a-2", "other", 0)]
    assert turns.caught_up("a", "room:inn", frames) == frames[:2]
    assert turns.caught_up("a", "room:inn", frames) == []
    assert turns.observe("a", 10, "room:inn", Delta("t-a-1", " there", 5))
    turn = turns.get("t-a-1")
    assert turn is not None and turn.text == "hello there"


async def test_a_game_interrupt_asks_the_node_while_leases_are_not_trusted() -> None:
    """Within the grace after Redis came back (a restarted Redis lost every lease until
    the nodes renew), a missing lease is no proof of a dead node: the interrupt is asked
    of its node (no 404); after it, a node with no lease is a 404 at once."""
    asked: list[str] = []

    async def alive(node_id: str) -> bool:
        asked.append(node_id)
        return False

    leases = types.SimpleNamespace(alive=alive)
    cluster = types.SimpleNamespace(leases_trusted=False, leases=leases)
    node: Any = types.SimpleNamespace(cluster=cluster)
    await _check_turn_node_alive(node, "b", "t-b-1")  # goes on to ask node b
    assert asked == []
    cluster.leases_trusted = True
    with pytest.raises(ApiError) as refused:
        await _check_turn_node_alive(node, "b", "t-b-1")
    assert (refused.value.status, refused.value.code, asked) == (404, "unknown_turn", ["b"])
