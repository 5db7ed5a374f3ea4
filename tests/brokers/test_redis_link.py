"""The raw Redis link and the publisher on it: replies parsed as they arrive, batches in order.

The parsing tests feed bytes to a `RedisLink` directly; the others use a real
redis-server of their own (the `redis` fixture).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from npc_server.brokers.redis_link import LinkError, RedisLink, command, open_link
from npc_server.brokers.redis_publisher import Publisher, PublishRefused
from tests.support.redis import RedisServer
from tests.support.wait import wait_until

WAIT = 10.0
REPLIES = (
    b"+OK\r\n:3\r\n$-1\r\n-ERR wrong\r\n"
    b"*3\r\n$7\r\nmessage\r\n$6\r\nnpc:ch\r\n$5\r\nd\r\na\x00\r\n"
    b"*2\r\n$4\r\npong\r\n$6\r\nsync:1\r\n"
)


def parsed(chunks: list[bytes]) -> list[Any]:
    got: list[Any] = []
    link = RedisLink(got.append)
    for chunk in chunks:
        link.data_received(chunk)
    assert not link.closed.done()
    return got


async def test_replies_split_at_any_byte_are_handed_over_whole_and_in_order() -> None:
    """However the replies are cut into reads, each reaches the callback once, complete."""
    whole = parsed([REPLIES])
    assert whole[:3] == [b"OK", 3, None]
    assert isinstance(whole[3], Exception) and "wrong" in str(whole[3])
    assert whole[4:] == [[b"message", b"npc:ch", b"d\r\na\x00"], [b"pong", b"sync:1"]]
    for cut in range(1, len(REPLIES)):
        assert repr(parsed([REPLIES[:cut], REPLIES[cut:]])) == repr(whole)
    assert repr(parsed([bytes([b]) for b in REPLIES])) == repr(whole)


async def test_what_is_not_resp_closes_the_link_with_the_reason() -> None:
    """Bytes that are not RESP end the link (closed, with a LinkError) instead of raising
    out of the event loop's callback."""
    got: list[Any] = []
    link = RedisLink(got.append)
    link.data_received(b":1\r\n!!! not resp\r\n")
    assert got == [1]
    assert isinstance(link.closed.exception(), LinkError)
    assert not link.is_open
    with pytest.raises(LinkError):
        link.write(command("PING"))


def test_commands_are_written_as_resp() -> None:
    """`command` writes each argument as a bulk string, bytes as they are."""
    assert command("PUBLISH", "npc:a", b"\x00\r\n") == (
        b"*3\r\n$7\r\nPUBLISH\r\n$5\r\nnpc:a\r\n$3\r\n\x00\r\n\r\n"
    )


async def test_a_link_over_redis_py_s_connection_subscribes_and_publishes(
    redis: RedisServer,
) -> None:
    """A link takes over a connection redis-py opened (with the URL's password) and from
    then on carries commands and their replies itself."""
    admin = aioredis.Redis.from_url(redis.url)
    await admin.config_set("requirepass", "s3cret")
    url = redis.url.replace("redis://", "redis://:s3cret@")
    pool = aioredis.ConnectionPool.from_url(url)
    heard: list[Any] = []
    answers: list[Any] = []
    try:
        subscriber = await open_link(pool, heard.append)
        publisher = await open_link(pool, answers.append)
        subscriber.write(command("SUBSCRIBE", "npc:x") + command("PING", "ready"))
        # PING's answer: a pong push (RESP2) or the bare argument (RESP3, redis-py 8's)
        await wait_until(lambda: b"ready" in heard or [b"pong", b"ready"] in heard, what="pong")
        publisher.write(command("PUBLISH", "npc:x", b"one") + command("PUBLISH", "npc:y", b"2"))
        await wait_until(lambda: len(answers) == 2, what="the publish answers")
        assert answers == [1, 0]
        await wait_until(lambda: [b"message", b"npc:x", b"one"] in heard, what="the message")
        subscriber.close()
        publisher.close()
        assert isinstance(subscriber.closed.exception(), LinkError)
    finally:
        auth = aioredis.Redis.from_url(url)
        await auth.config_set("requirepass", "")
        await auth.aclose()
        await admin.aclose()
        await pool.aclose()


class Recorder:
    """What a publisher reports: answers per batch and publications lost."""

    def __init__(self) -> None:
        self.answered: list[tuple[list[str], list[Any]]] = []
        self.lost: list[tuple[str, int]] = []
        self.reasons: list[BaseException] = []

    def on_answered(self, channels: list[str], receivers: list[Any], heard: int) -> None:
        self.answered.append((channels, receivers))

    def on_lost(self, lost: list[tuple[str, int]], exc: BaseException) -> None:
        self.lost.extend(lost)
        self.reasons.append(exc)


def publisher_for(pool: Any, seen: Recorder, window: float = 0.0) -> Publisher:
    return Publisher(
        pool,
        window=window,
        answered=seen.on_answered,
        lost=seen.on_lost,
        heard=lambda: 0,
        number=lambda: 7,
    )


async def test_batches_in_flight_are_answered_in_order(redis: RedisServer) -> None:
    """Publications written in several batches without waiting get their receiver counts
    matched to them in order, batch by batch."""
    pool = aioredis.ConnectionPool.from_url(redis.url)
    listener = await open_link(pool, lambda reply: None)
    listener.write(command("SUBSCRIBE", "npc:b"))
    seen = Recorder()
    publisher = publisher_for(pool, seen)
    try:
        assert await publisher.connect()
        for channel in ("npc:a", "npc:b", "npc:a", "npc:b"):
            publisher.add_nowait(channel, b"x")
            await asyncio.sleep(0)  # each its own batch (window 0)
        await wait_until(lambda: sum(len(c) for c, _ in seen.answered) == 4, what="answers")
        flat = [(c, r) for cs, rs in seen.answered for c, r in zip(cs, rs, strict=True)]
        assert flat == [("npc:a", 0), ("npc:b", 1), ("npc:a", 0), ("npc:b", 1)]
        assert publisher.sent == 4 and not seen.lost
    finally:
        await publisher.aclose()
        listener.close()
        await pool.aclose()


async def test_a_batch_cut_off_with_its_link_is_lost_once_and_the_next_goes_on_a_new_link(
    redis: RedisServer,
) -> None:
    """A batch written on a link that closes before its answers is reported lost (once,
    with the publication number it could hold); what follows opens a new link."""
    pool = aioredis.ConnectionPool.from_url(redis.url)
    seen = Recorder()
    publisher = publisher_for(pool, seen, window=0.0)
    try:
        assert await publisher.connect()
        publisher.add_nowait("npc:a", b"x")
        await asyncio.sleep(0)  # written
        link = publisher._link
        assert link is not None
        link.close()  # before Redis can answer
        await wait_until(lambda: seen.lost == [("npc:a", 7)], what="the batch lost")
        publisher.add_nowait("npc:b", b"y")
        await wait_until(lambda: bool(seen.answered), what="the next batch answered")
        assert seen.answered == [(["npc:b"], [0])] and seen.lost == [("npc:a", 7)]
        assert publisher._link is not link
    finally:
        await publisher.aclose()
        await pool.aclose()


async def test_a_publisher_that_cannot_reach_redis_reports_what_waited_as_lost() -> None:
    """With nothing listening at the URL, connecting fails and the queued publications are
    reported lost, without an exception."""
    from tests.support.redis import free_port

    pool = aioredis.ConnectionPool.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1
    )
    seen = Recorder()
    publisher = publisher_for(pool, seen)
    try:
        publisher.add_nowait("npc:a", b"x")
        await asyncio.wait_for(publisher.connect(), WAIT)
        assert seen.lost == [("npc:a", 7)] and publisher.pending == []
    finally:
        await publisher.aclose()
        await pool.aclose()


async def test_the_links_speak_resp2_whatever_redis_py_would_negotiate(redis: RedisServer) -> None:
    """A link's connection is RESP2 (no pushes or server notices among the answers), even
    though redis-py 8 would open RESP3."""
    pool = aioredis.ConnectionPool.from_url(redis.url)
    answers: list[Any] = []
    link = await open_link(pool, answers.append)
    try:
        link.write(command("CLIENT", "INFO"))
        await wait_until(lambda: bool(answers), what="CLIENT INFO")
        assert b"resp=2" in answers[0]
    finally:
        link.close()
        await pool.aclose()


async def test_a_batch_unanswered_too_long_gives_up_the_link(redis: RedisServer) -> None:
    """A batch still waiting for its answers when checked past the limit is reported lost
    and its link dropped (a dead path to Redis); the next publication goes on a new one."""
    pool = aioredis.ConnectionPool.from_url(redis.url)
    seen = Recorder()
    publisher = publisher_for(pool, seen)
    try:
        assert await publisher.connect()
        first = publisher._link
        publisher.add_nowait("npc:a", b"x")
        await asyncio.sleep(0)  # written, and no answer can have been read yet
        publisher.check_nowait(idle_after=60, answer_within=-1)
        await wait_until(lambda: seen.lost == [("npc:a", 7)], what="the batch lost")
        publisher.add_nowait("npc:b", b"y")
        await wait_until(lambda: bool(seen.answered), what="the next batch answered")
        assert publisher._link is not first and seen.answered == [(["npc:b"], [0])]
    finally:
        await publisher.aclose()
        await pool.aclose()


async def test_an_idle_link_is_pinged_without_shifting_the_answers(redis: RedisServer) -> None:
    """An idle publisher link gets a PING; its answer is not taken for a publication's."""
    pool = aioredis.ConnectionPool.from_url(redis.url)
    listener = await open_link(pool, lambda reply: None)
    listener.write(command("SUBSCRIBE", "npc:b") + command("PING"))
    seen = Recorder()
    publisher = publisher_for(pool, seen)
    try:
        assert await publisher.connect()
        publisher.check_nowait(idle_after=-1, answer_within=60)
        publisher.add_nowait("npc:b", b"x")
        await wait_until(lambda: bool(seen.answered), what="the publication answered")
        assert seen.answered == [(["npc:b"], [1])] and not seen.lost
    finally:
        await publisher.aclose()
        listener.close()
        await pool.aclose()


async def test_a_publication_redis_refuses_is_lost_and_the_link_stays(redis: RedisServer) -> None:
    """An error answer (here an ACL that forbids the channel) counts that publication lost,
    as refused, and the others of its batch as answered."""
    admin = aioredis.Redis.from_url(redis.url)
    await admin.acl_setuser(
        "pub", enabled=True, passwords=["+pw"], channels=["npc:ok*"], commands=["+@all"]
    )
    pool = aioredis.ConnectionPool.from_url(redis.url.replace("redis://", "redis://pub:pw@"))
    seen = Recorder()
    publisher = publisher_for(pool, seen, window=1.0)
    try:
        assert await publisher.connect()
        publisher.add_nowait("npc:ok1", b"x")
        publisher.add_nowait("npc:bad", b"y")
        await wait_until(lambda: bool(seen.answered), what="the batch answered")
        assert seen.answered == [(["npc:ok1", "npc:bad"], [0, 0])]
        assert seen.lost == [("npc:bad", 7)] and isinstance(seen.reasons[0], PublishRefused)
        link = publisher._link
        assert link is not None and link.is_open
    finally:
        await publisher.aclose()
        await admin.acl_deluser("pub")
        await admin.aclose()
        await pool.aclose()
