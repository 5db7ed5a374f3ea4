"""A Redis password never reaches a message: start-up errors and log lines show `***`.

On a real redis-server with `requirepass`: a wrong password at start-up (the
check `serve` runs, the broker's start), and Redis going away at runtime (the
memory store's warning, and its line when Redis is back).
"""

from __future__ import annotations

import logging

import pytest
import redis as redis_sync

from npc_server.brokers.redis import BrokerUnavailable, RedisBroker, check_reachable, url_problem
from npc_server.memories.redis import RedisMemoryStore
from tests.support.redis import RedisServer

PASSWORD = "s3cretpw"
WRONG = "wrongpw"


def with_password(url: str, password: str, user: str = "") -> str:
    return url.replace("redis://", f"redis://{user}:{password}@", 1)


def require_password(server: RedisServer) -> None:
    client = redis_sync.Redis.from_url(server.url)
    try:
        client.config_set("requirepass", PASSWORD)
    finally:
        client.close()


@pytest.fixture
def locked(redis: RedisServer) -> RedisServer:
    """The test's redis-server, answering only with `PASSWORD`."""
    require_password(redis)
    return redis


def assert_masked(text: str, password: str) -> None:
    assert password not in text
    assert "***@127.0.0.1" in text


@pytest.mark.parametrize("user", ["", "default"])
def test_a_wrong_password_at_start_up_is_not_shown(locked: RedisServer, user: str) -> None:
    """The start-up check's message (on stderr) names the URL, with the password masked."""
    with pytest.raises(BrokerUnavailable) as refused:
        check_reachable(with_password(locked.url, WRONG, user))
    assert "cannot reach Redis at" in str(refused.value)
    assert_masked(str(refused.value), WRONG)


def test_a_url_redis_cannot_use_is_refused_without_its_password() -> None:
    """A port out of range: refused like an unreachable Redis, not a traceback."""
    with pytest.raises(BrokerUnavailable) as refused:
        check_reachable(f"redis://:{PASSWORD}@127.0.0.1:99999/0")
    assert "is not a Redis URL redis-py can use" in str(refused.value)
    assert_masked(str(refused.value), PASSWORD)
    # redis-py's own text quotes what it read as the port: a piece of a password with a '/'
    with pytest.raises(BrokerUnavailable) as refused:
        check_reachable("redis://:hunt/er2secret@127.0.0.1:6379/0")
    assert "hunt" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "said", "pieces"),
    [
        # redis-py quotes the "port" with repr, `\` doubled: no longer the URL's text.
        ("redis://:s3\\cret/pw@127.0.0.1:6379/0", "the port is not a number", ["s3\\", "cret"]),
        # urllib quotes the "host" in [ ], which runs past the password's `@`.
        ("redis://:a]b[@1Zq\\@h:99999", "the host in [ ] is not an IP", ["@1Z", "1Zq"]),
    ],
)
def test_what_redis_py_refuses_is_told_without_the_password(
    url: str, said: str, pieces: list[str]
) -> None:
    """Its text showed `'s3\\\\cret'` and `'@1Zq\\\\@h:99999' does not appear to be an IPv4
    or IPv6 address`: quotes that did not match the URL's text were left unmasked."""
    problem = url_problem(url)
    assert problem.startswith(f"{said}; a / ? # [ or ] in the user or password must be")
    for piece in pieces:
        assert piece not in problem


async def test_the_broker_refused_at_start_does_not_show_the_password(
    locked: RedisServer,
) -> None:
    broker = RedisBroker(with_password(locked.url, WRONG), "n1")
    with pytest.raises(BrokerUnavailable) as refused:
        await broker.start()
    assert_masked(str(refused.value), WRONG)


async def test_redis_away_at_runtime_is_logged_without_the_password(
    locked: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The memory store's warning when Redis goes, and its line when it is back."""
    now = [0.0]
    store = RedisMemoryStore(with_password(locked.url, PASSWORD), 3600.0, clock=lambda: now[0])
    try:
        assert await store.load("mira", "player:alice") == ()  # the right password
        locked.stop()
        with caplog.at_level(logging.INFO, "npc_server.memories.redis"):
            assert await store.load("mira", "player:alice") is None
            locked.start()
            require_password(locked)
            now[0] += 60.0  # past the store's back-off
            assert await store.load("mira", "player:alice") == ()
        failed, back = [r.getMessage() for r in caplog.records]
        assert failed.startswith("memory load failed, Redis at")
        assert back.startswith("memory: Redis at")
        for message in (failed, back):
            assert_masked(message, PASSWORD)
    finally:
        await store.aclose()


def test_a_read_only_replica_is_refused_at_start_up(redis: RedisServer) -> None:
    """A replica answers PING, then refuses every write: nodes started, said they were
    listening and died on their first write (ReadOnlyError). Refused before, naming it."""
    from tests.support.redis import free_port

    client = redis_sync.Redis.from_url(redis.url)
    try:
        client.replicaof("127.0.0.1", str(free_port()))
        with pytest.raises(
            BrokerUnavailable, match="is a replica, not a primary: point it at the primary"
        ):
            check_reachable(redis.url)
    finally:
        client.replicaof("NO", "ONE")
        client.close()
    check_reachable(redis.url)  # a primary again: accepted
