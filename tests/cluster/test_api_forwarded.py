"""The cluster API's parts on a real redis-server, nodes in this process: forged
requests from another node, the node directory and its scatter-gather, trusted
contexts read back from Redis; and the checks of other nodes' answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis

from npc_server.api import _context_everywhere, cluster_say
from npc_server.api_schema import ApiError
from npc_server.brokers import player_channel, wire
from npc_server.brokers.redis import RedisBroker
from npc_server.cluster.answers import kick_counts, member_list, player_part, valid
from npc_server.cluster.forward import Forwarder
from npc_server.cluster.leases import alive_key, owner_key
from npc_server.cluster.scatter import Gathered, gather
from npc_server.cluster.trusted import MAX_VERSION
from npc_server.node import Node
from npc_server.npcs import load_npcs
from npc_server.turns import Audience
from tests.support.alloc import length_claims, peak_allocation
from tests.support.redis import RedisServer
from tests.support.server import DEMO_NPCS, server_config
from tests.support.wait import wait_until


@asynccontextmanager
async def started(redis: RedisServer, *names: str) -> AsyncIterator[list[Node]]:
    """Nodes in this process, each with its part in the cluster (`Forwarder`) started."""
    config, npcs = server_config(), load_npcs(DEMO_NPCS)
    nodes = [Node(config, npcs, broker=RedisBroker(redis.url, name)) for name in names]
    for node in nodes:
        await node.start()
    try:
        yield nodes
    finally:
        for node in nodes:
            await node.broker.wait_subscribed()  # type: ignore[attr-defined]
            await node.aclose()


def cluster(node: Node) -> Forwarder:
    assert node.cluster is not None
    return node.cluster


@asynccontextmanager
async def forger(redis: RedisServer) -> AsyncIterator[tuple[Any, Any]]:
    """A Redis client posing as node "forger", listening on its node channel."""
    # Any: redis-py's annotations differ between its releases (`aclose` typed in some).
    client: Any = aioredis.from_url(redis.url)
    pubsub: Any = client.pubsub()
    await pubsub.subscribe("npc:node:forger")
    await pubsub.get_message(timeout=5)  # the subscription's confirmation
    try:
        yield client, pubsub
    finally:
        await pubsub.aclose()
        await client.aclose()


async def answer_to(client: Any, pubsub: Any, number: int, message: dict[str, Any]) -> Any:
    """Publish `message` from "forger" to node x; the message x answers with."""
    await client.publish("npc:node:x", wire.encode_message("forger", message, number))
    got = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
    assert got is not None, f"no answer to {message}"
    answer = wire.decode(got["data"]).message
    assert answer is not None and answer["k"] == "answer"
    return answer


FORGED: list[tuple[dict[str, Any], int]] = [
    ({"op": "kick", "player": 7}, 400),
    ({"op": "kick"}, 400),
    ({"op": "kick", "player": "alice", "ban": "60"}, 400),
    ({"op": "kick", "player": "alice", "ban": 0}, 400),
    ({"op": "kick", "player": "alice", "ban": 10**9}, 400),
    ({"op": "unban", "player": 7}, 400),
    ({"op": "room", "room": "bad room!"}, 400),
    ({"op": "player", "player": "x" * 500}, 400),
    ({"op": "context", "scope": "player:alice", "npc": "nobody", "data": {}}, 404),
    ({"op": "context", "scope": "guild:alice", "data": {"time": "night"}}, 400),
    ({"op": "context", "scope": "player:alice", "data": [1]}, 400),
    ({"op": "context", "scope": "player:alice", "data": {"x": "y" * 70_000}}, 413),
    ({"op": "context", "scope": "player:alice", "data": {}, "v": "2"}, 400),
    ({"op": "context", "scope": "player:alice", "data": {}, "v": 0}, 400),
    ({"op": "context", "scope": "player:alice", "data": {}, "v": True}, 400),
    ({"op": "say", "npc": "merchant", "audience": 3, "text": "hi"}, 400),
    ({"op": "say", "npc": "merchant", "audience": "guild:alice", "text": "hi"}, 400),
    ({"op": "drop-everything"}, 400),
    ({"op": ["kick"]}, 400),
]


async def test_forged_api_requests_are_refused_and_change_nothing(redis: RedisServer) -> None:
    """Requests from another node that do not fit (wrong types, unknown NPC, scope or
    operation, too big) are answered with the error a body would get; one without an
    ask number is dropped and counted; the node goes on and serves a valid one."""
    async with started(redis, "x") as (x,), forger(redis) as (client, pubsub):
        session = x.open_session("alice")
        for number, (message, status) in enumerate(FORGED, start=1):
            answer = await answer_to(client, pubsub, number, {"k": "api", **message, "ask": number})
            assert answer["ask"] == number and answer["error"]["status"] == status, message
        assert x.hub.get(session.id) is session
        assert x.bans.remaining("alice") == 0
        assert x.contexts.trusted.for_npc("alice", None, "merchant") == {}
        bad_ask = {"k": "api", "op": "kick", "player": "alice", "ask": "one"}
        await client.publish("npc:node:x", wire.encode_message("forger", bad_ask, 100))
        valid: dict[str, Any] = {"op": "context", "scope": "player:alice", "npc": "merchant"}
        valid |= {"data": {"time": "night"}, "k": "api", "ask": 101}
        assert (await answer_to(client, pubsub, 101, valid))["result"] == {"ok": True}
        assert x.contexts.trusted.for_npc("alice", None, "merchant") == {"time": "night"}
        assert cluster(x).rejected == 1 and x.hub.get(session.id) is session


async def test_gather_names_the_nodes_that_do_not_answer(redis: RedisServer) -> None:
    """A stray key where the directory goes is replaced; gather gets y's answer and names
    a node with a lease that never answers; a node that stopped leaves the directory."""
    client = aioredis.from_url(redis.url)
    try:
        await client.set("npc:nodes", b"not a sorted set")
        async with started(redis, "x", "y") as (x, y):
            assert await cluster(x).directory.live() == ["x", "y"]
            seconds, micros = await client.time()
            await client.zadd("npc:nodes", {"ghost": seconds * 1000 + micros // 1000})
            await client.set("npc:alive:ghost", b"1", px=60_000)
            y.open_session("bob")
            y.hub.join("inn", "bob")
            got = await gather(cluster(x), {"k": "api", "op": "room", "room": "inn"})
            assert got.results == {"y": {"members": ["bob"]}} and got.missing == ["ghost"]
            assert got.partial() == {"partial": True, "nodes_missing": ["ghost"]}
            await client.delete("npc:alive:ghost")
            await cluster(y).aclose()
            assert await cluster(x).directory.live() == ["x"]
    finally:
        await client.aclose()


async def test_trusted_contexts_in_redis_are_checked_when_read(redis: RedisServer) -> None:
    """A node reading a player's trusted context from Redis takes the entries that are
    valid and drops a truncated one and one of an unknown NPC; a key of another type is
    no crash; a room's copy is read when a node starts, and a room without one leaves
    the list of rooms."""
    client = aioredis.from_url(redis.url)
    try:
        await client.hset(
            "npc:trusted:player:alice",
            mapping={
                "*": msgpack.packb({"time": "night"}),
                "merchant": msgpack.packb({"gold": 3})[:-1],
                "nobody": msgpack.packb({"gold": 5}),
                "guard": msgpack.packb({"bag": {b"key": 1, "coin": 2}}),  # a bytes key
                "questgiver": length_claims(1000),  # scanned before it is unpacked
            },
        )
        await client.set("npc:trusted:player:bob", b"a string")
        await client.hset("npc:trusted:room:inn", "*", msgpack.packb({"weather": "rain"}))
        await client.sadd("npc:trusted:rooms", "inn", "gone")
        async with started(redis, "x") as (x,):
            copies = cluster(x).trusted_copies
            assert x.contexts.trusted.for_npc("", "inn", "merchant") == {"weather": "rain"}
            with peak_allocation() as peak:  # questgiver's claims are not allocated
                await copies.load("player:alice")
            assert peak.bytes < 2_000_000
            await copies.load("player:bob")
            assert x.contexts.trusted.for_npc("alice", None, "merchant") == {"time": "night"}
            assert x.contexts.trusted.for_npc("bob", None, "merchant") == {}
            assert x.contexts.trusted.for_npc("alice", None, "guard") == {"time": "night"}
            assert copies.rejected == 4
        assert await client.smembers("npc:trusted:rooms") == {b"inn"}  # "gone" has no copy
    finally:
        await client.aclose()


async def test_a_copy_older_than_the_nodes_is_not_applied(redis: RedisServer) -> None:
    """Copies carry their version: one sent or read later but older than the node's
    (two posts to two nodes at once, a delayed message) leaves the newer one; a copy
    from a node of an earlier release (no version) is applied."""
    async with started(redis, "x") as (x,), forger(redis) as (client, pubsub):
        copies = cluster(x).trusted_copies
        post: dict[str, Any] = {"k": "api", "op": "context", "scope": "player:alice"}

        async def send(number: int, data: dict[str, Any], **version: int) -> None:
            message = {**post, "data": data, "ask": number, **version}
            assert (await answer_to(client, pubsub, number, message))["result"] == {"ok": True}

        def alices() -> dict[str, Any]:
            return x.contexts.trusted.for_npc("alice", None, "merchant")

        newest = MAX_VERSION - 10  # above any version Redis's clock gives (until 2255)
        await send(1, {"time": "night"}, v=newest)
        await send(2, {"time": "day"}, v=newest - 1)
        assert alices() == {"time": "night"} and copies.stale == 1
        await client.hset("npc:trusted:player:alice", "*", msgpack.packb({"time": "noon"}))
        await client.hset("npc:trusted-v:player:alice", "*", str(newest - 5))
        await copies.load("player:alice")
        assert alices() == {"time": "night"} and copies.stale == 2
        await send(3, {"time": "dawn"})
        assert alices() == {"time": "dawn"}
        assert cluster(x).statistics()["trusted_stale"] == 2  # /healthz routing


async def test_versions_rise_also_after_redis_restarts_empty(redis: RedisServer) -> None:
    """Each save gets a higher version than the last, also once Redis lost every key."""
    async with started(redis, "x") as (x,):
        copies = cluster(x).trusted_copies
        first = await copies.save("player:alice", None, {"time": "night"})
        second = await copies.save("room:inn", "merchant", {"weather": "rain"})
        client = aioredis.from_url(redis.url)
        try:
            await client.flushall()
        finally:
            await client.aclose()
        third = await copies.save("player:alice", None, {"time": "day"})
        assert first is not None and second is not None and third is not None
        assert 0 < first < second < third


@pytest.mark.parametrize("clock", [b"not a number", b"9000000000000000000", b"inf", b"-5"])
async def test_stray_keys_where_trusted_copies_go_are_replaced(
    redis: RedisServer, clock: bytes
) -> None:
    """Keys of another type where a post writes (the scope's hash, its versions, the
    list of rooms) and a clock that is no number or past any version: the post is saved
    all the same (a 503 every time, before) with a version every node applies, and a
    node that starts later reads it."""
    client = aioredis.from_url(redis.url)
    try:
        await client.set("npc:trusted:room:inn", b"stray")
        await client.rpush("npc:trusted-v:room:inn", b"stray")
        await client.set("npc:trusted-clock", clock)
        await client.set("npc:trusted:rooms", b"stray")
        async with started(redis, "x") as (x,):
            version = await cluster(x).trusted_copies.save("room:inn", None, {"weather": "fog"})
            assert version is not None and 0 < version <= MAX_VERSION
        async with started(redis, "y") as (y,):
            assert y.contexts.trusted.for_npc("", "inn", "merchant") == {"weather": "fog"}
        assert await client.type("npc:trusted:rooms") == b"set"
    finally:
        await client.aclose()


async def test_a_version_far_ahead_in_redis_is_not_applied(redis: RedisServer) -> None:
    """A version beyond any clock (a stray, or a bad node's) would pin its copy: every
    later post counted stale here. It is rejected when read, and refused when sent."""
    async with started(redis, "x") as (x,), forger(redis) as (client, pubsub):
        copies = cluster(x).trusted_copies
        await client.hset("npc:trusted:player:alice", "*", msgpack.packb({"time": "noon"}))
        await client.hset("npc:trusted-v:player:alice", "*", "99999999999999999999")
        await copies.load("player:alice")
        assert x.contexts.trusted.for_npc("alice", None, "merchant") == {}
        assert copies.rejected == 1
        post = {"k": "api", "op": "context", "scope": "player:alice", "data": {"time": "day"}}
        answer = await answer_to(client, pubsub, 1, {**post, "ask": 1, "v": MAX_VERSION + 1})
        assert answer["error"]["status"] == 400
        await _context_everywhere(x, "player:alice", None, {"time": "dusk"})
        assert x.contexts.trusted.for_npc("alice", None, "merchant") == {"time": "dusk"}


async def test_a_post_redis_does_not_take_changes_no_copy(redis: RedisServer) -> None:
    """`POST /api/context` in a cluster (`api._context_everywhere`) without Redis: 503
    `unavailable`, and the node's copy is the one it had."""
    async with started(redis, "x") as (x,):
        await _context_everywhere(x, "player:alice", None, {"time": "night"})
        redis.stop()
        try:
            with pytest.raises(ApiError) as refused:
                await _context_everywhere(x, "player:alice", None, {"time": "day"})
            assert (refused.value.status, refused.value.code) == (503, "unavailable")
            assert x.contexts.trusted.for_npc("alice", None, "merchant") == {"time": "night"}
        finally:
            redis.start()


async def test_a_post_refused_for_the_budget_is_not_kept_in_redis(redis: RedisServer) -> None:
    """Two posts for one player at once (all NPCs, and one NPC), each within the scope's
    byte budget alone, not together: one is answered 413, and Redis holds only the other
    (the save script checks the budget against what Redis has)."""
    async with started(redis, "x") as (x,):
        big = {"x": "y" * 20_000}
        results = await asyncio.gather(
            _context_everywhere(x, "player:alice", None, big),
            _context_everywhere(x, "player:alice", "merchant", big),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, ApiError)]
        assert [r.status for r in refused] == [413]
        client = aioredis.from_url(redis.url)
        try:
            fields = await client.hkeys("npc:trusted:player:alice")
            versions = await client.hkeys("npc:trusted-v:player:alice")
        finally:
            await client.aclose()
        assert len(fields) == 1 and fields == versions


def test_answers_that_do_not_fit_count_their_node_as_missing() -> None:
    """A node's kick counts or listing that do not fit (wrong types, a bool for a count, a
    session state no node has, a name too long) are dropped and name that node missing."""
    kicks = Gathered(
        {
            "a": {"sessions": 2, "sockets": 1},
            "b": {"sessions": "many", "sockets": 1},
            "c": {"sessions": True, "sockets": 0},
            "d": {"sessions": 1, "sockets": 1, "ids": ["s-d-1"]},
            "e": {"sessions": 1, "sockets": 1, "ids": [7]},
            "f": {"sessions": 1, "sockets": 1, "ids": "s-f-1"},
        }
    )
    assert valid(kicks, kick_counts) == [
        ("a", {"sessions": 2, "sockets": 1, "ids": None}),  # a node of an earlier release
        ("d", {"sessions": 1, "sockets": 1, "ids": ["s-d-1"]}),
    ]
    assert kicks.missing == ["b", "c", "e", "f"]
    session = {"session": "s-a-1", "state": "attached", "last_seq": 4}
    players = Gathered(
        {
            "a": {"sessions": [session], "rooms": ["inn"], "online": True},
            "b": {"sessions": [{**session, "state": "hacked"}], "rooms": [], "online": True},
            "e": {"sessions": [{**session, "state": ["attached"]}], "rooms": [], "online": True},
            "c": {"sessions": [], "rooms": ["x" * 300], "online": False},
            "d": {"sessions": [{**session, "last_seq": -1}], "rooms": [], "online": "yes"},
        }
    )
    [(origin, part)] = valid(players, player_part)
    assert origin == "a" and part == {"sessions": [session], "rooms": ["inn"], "online": True}
    assert players.missing == ["b", "c", "d", "e"]
    rooms = Gathered({"a": {"members": ["bob"]}, "b": {"members": [1]}, "c": {}})
    assert valid(rooms, member_list) == [("a", ["bob"])] and rooms.missing == ["b", "c"]


def test_an_error_answered_by_another_node_is_checked_like_input() -> None:
    """Another node's error answer becomes that HTTP error only when it is one (a status of
    400-599 and a code); anything else is a 502 naming the node, never a crash."""
    from npc_server.api import refusal

    good = refusal("n2", {"status": 429, "code": "busy", "message": "wait", "retry_after": 1.5})
    assert (good.status, good.code, good.message, good.retry_after) == (429, "busy", "wait", 1.5)
    for bad in ({"status": "429", "code": "x"}, {"status": 200, "code": "x"}, {"status": 500}):
        refused = refusal("n2", bad)
        assert refused.status == 502 and "n2" in refused.message
    for retry in ("soon", float("nan"), float("inf"), -1, 1e12):  # no Retry-After from it
        odd_retry = refusal("n2", {"status": 503, "code": "unavailable", "retry_after": retry})
        assert odd_retry.status == 503 and odd_retry.retry_after is None, retry


OWNER_ANSWERS: list[tuple[dict[str, Any], bool]] = [
    ({"turn": "t-forger-1", "queued": None}, True),
    ({"turn": "t-forger-1", "queued": 2}, True),  # its place in the NPC's queue
    ({"turn": b"t-forger-1", "queued": None}, False),  # bytes: no JSON for them
    ({"turn": "t-forger-1", "queued": "no"}, False),
    ({"turn": "t-forger-1", "queued": True}, False),
    ({"turn": "t-forger-1", "queued": -1}, False),
    ({"turn": "t-forger-1"}, False),
    ({"turn": "", "queued": True}, False),
    ({"turn": ["t"], "queued": None}, False),
]


@pytest.mark.parametrize(("result", "fits"), OWNER_ANSWERS)
async def test_what_the_owner_node_answers_to_a_game_say_is_checked(
    redis: RedisServer, result: dict[str, Any], fits: bool
) -> None:
    """The conversation's node ("forger") answers x's forwarded say: what fits is the
    say's answer, anything else a 502 naming that node (was a 500 when JSON failed)."""
    async with started(redis, "x") as [x], forger(redis) as (client, pubsub):
        await client.set(alive_key("forger"), b"1")
        await client.set(owner_key("merchant", player_channel("alice")), "forger")
        say = asyncio.create_task(cluster_say(x, "merchant", Audience(player="alice"), "hi", None))
        got = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert got is not None, "x forwarded nothing"
        ask = wire.decode(got["data"]).message
        assert ask is not None and ask["op"] == "say"
        answer = {"k": "answer", "ask": ask["ask"], "result": result}
        await client.publish("npc:node:x", wire.encode_message("forger", answer, 1))
        if fits:
            assert await say == result
        else:
            with pytest.raises(ApiError) as refused:
                await say
            assert refused.value.status == 502 and "forger" in refused.value.message


async def test_a_forwarded_game_say_reads_the_trusted_context_from_redis_first(
    redis: RedisServer,
) -> None:
    """A game say another node forwards to the conversation's node is run with the
    player's trusted context as Redis has it, even when this node had no copy (the
    player's sessions here ended, or it never had one)."""
    client = aioredis.from_url(redis.url)
    try:
        await client.hset(
            "npc:trusted:player:alice", mapping={"*": msgpack.packb({"time": "night"})}
        )
        async with started(redis, "x") as (x,), forger(redis) as (publisher, pubsub):
            assert x.contexts.trusted.for_npc("alice", None, "merchant") == {}
            say = {"k": "api", "op": "say", "npc": "merchant", "audience": "player:alice"}
            answer = await answer_to(publisher, pubsub, 1, {**say, "text": "hi", "ask": 1})
            assert "turn" in answer["result"]
            assert x.contexts.trusted.for_npc("alice", None, "merchant") == {"time": "night"}
    finally:
        await client.aclose()


async def test_a_node_keeps_a_players_trusted_context_after_their_last_session_there(
    redis: RedisServer,
) -> None:
    """In a cluster the trusted copy outlives the player's sessions on a node (a turn of
    theirs may go on there, or a game say come there); their own contexts still go."""
    async with started(redis, "x") as (x,), forger(redis) as (publisher, pubsub):
        session = x.open_session("alice")
        post: dict[str, Any] = {"op": "context", "scope": "player:alice", "npc": "merchant"}
        post |= {"data": {"time": "night"}, "k": "api", "ask": 1}
        assert (await answer_to(publisher, pubsub, 1, post))["result"] == {"ok": True}
        x.end_session(session)
        assert x.contexts.trusted.for_npc("alice", None, "merchant") == {"time": "night"}


def hold_first_read(x: Node) -> tuple[asyncio.Event, asyncio.Event]:
    """x's next read of a trusted context waits until the test sets `release`; `entered`
    is set once it waits (later reads go straight on)."""
    copies = cluster(x).trusted_copies
    read = copies.load
    entered, release = asyncio.Event(), asyncio.Event()

    async def held_first(scope: str) -> bool:
        if not entered.is_set():
            entered.set()
            await release.wait()
        return await read(scope)

    copies.load = held_first  # type: ignore[method-assign]
    return entered, release


async def says_behind_a_held_first(
    x: Node, redis: RedisServer, texts: list[Any], unanswered: int = 0
) -> list[Any]:
    """Forwarded game says to alice's merchant conversation (not started on x), sent in
    one write while x's first trusted-context read waits, then a kick; the answers in
    the order they came (all but `unanswered` of the says get one)."""
    async with forger(redis) as (publisher, pubsub):
        entered, release = hold_first_read(x)
        say = {"k": "api", "op": "say", "npc": "merchant", "audience": "player:alice"}
        messages = [{**say, "text": text, "ask": ask} for ask, text in enumerate(texts, 1)]
        messages.append({"k": "api", "op": "kick", "ask": 0})  # answered at once
        async with publisher.pipeline(transaction=False) as pipe:
            for number, message in enumerate(messages, 1):
                pipe.publish("npc:node:x", wire.encode_message("forger", message, number))
            await pipe.execute()
        answers: list[dict[str, Any]] = []
        for _ in range(len(messages) - unanswered):
            got = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            assert got is not None, f"answers so far: {answers}"
            answer = wire.decode(got["data"]).message
            assert answer is not None
            answers.append(answer)
            if len(answers) == 1:  # the kick's: x has read every say by now
                assert entered.is_set() and answer["ask"] == 0
                release.set()
        return answers[1:]


def player_lines(x: Node) -> list[str]:
    conversation = x.find_conversation("merchant", Audience(player="alice"))
    assert conversation is not None
    return [entry.text for entry in conversation.memory.lines() if entry.role == "player"]


async def test_game_says_forwarded_for_a_conversation_not_started_yet_run_in_their_order(
    redis: RedisServer,
) -> None:
    """The first forwarded say of a conversation reads its trusted context from Redis
    first; a say forwarded for it meanwhile waits behind it instead of overtaking."""
    async with started(redis, "x") as (x,):
        answers = await says_behind_a_held_first(x, redis, ["first", "second"])
        assert [a["ask"] for a in answers] == [1, 2]
        first, second = answers[0]["result"], answers[1]["result"]
        assert "turn" in first and "turn" in second and first["turn"] != second["turn"]
        said = player_lines(x)
        assert said and "first" in said[0]  # the first say started the conversation


async def test_a_say_posted_to_the_owner_itself_waits_behind_a_forwarded_first_say(
    redis: RedisServer,
) -> None:
    """A game say posted to x's own API while the first say forwarded to x for that
    conversation still reads its trusted context runs after it, not before: says keep
    the order they reached x in, whichever node the game server called."""
    async with started(redis, "x") as (x,), forger(redis) as (publisher, pubsub):
        entered, release = hold_first_read(x)
        say = {"k": "api", "op": "say", "npc": "merchant", "audience": "player:alice"}
        forwarded = wire.encode_message("forger", {**say, "text": "first", "ask": 1}, 1)
        await publisher.publish("npc:node:x", forwarded)
        await asyncio.wait_for(entered.wait(), 5)
        alice = Audience(player="alice")
        local = asyncio.create_task(cluster_say(x, "merchant", alice, "second", None))
        behind = cluster(x)._starting
        try:
            await wait_until(lambda: len(behind.get(("merchant", "player:alice"), [])) == 1)
        finally:
            release.set()
        got = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert got is not None
        first = wire.decode(got["data"]).message
        second = await asyncio.wait_for(local, 5)
        assert first is not None and first["ask"] == 1 and "turn" in first["result"]
        assert "turn" in second and second["turn"] != first["result"]["turn"]
        said = player_lines(x)
        assert said and "first" in said[0]  # the forwarded say started the conversation


async def test_a_say_behind_a_refused_first_say_starts_the_conversation(
    redis: RedisServer,
) -> None:
    """The first say is refused (400): the one that waited behind it is still answered,
    in its turn, and starts the conversation itself."""
    async with started(redis, "x") as (x,):
        answers = await says_behind_a_held_first(x, redis, [5, "second", "third"])
        assert [a["ask"] for a in answers] == [1, 2, 3]
        assert answers[0]["error"]["status"] == 400
        assert "turn" in answers[1]["result"] and "turn" in answers[2]["result"]
        said = player_lines(x)
        assert said and "second" in said[0]
        assert not cluster(x)._starting  # nothing left waiting


@pytest.mark.server_errors("the first say fails on purpose")
async def test_a_say_behind_a_first_say_that_failed_is_still_answered(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first say's task fails unexpectedly (no answer for it: its node answers its
    caller 503 after the wait): the says behind it still run, in order."""
    from npc_server import api

    say = api._FORWARDED["say"]

    def failing(node: Node, message: Any) -> dict[str, Any]:
        if message.get("text") == "boom":
            raise RuntimeError("a bug in the first say")
        return say(node, message)

    monkeypatch.setitem(api._FORWARDED, "say", failing)
    async with started(redis, "x") as (x,):
        answers = await says_behind_a_held_first(x, redis, ["boom", "second"], unanswered=1)
        assert [a["ask"] for a in answers] == [2] and "turn" in answers[0]["result"]
        assert "second" in player_lines(x)[0] and not cluster(x)._starting
