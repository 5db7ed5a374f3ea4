"""The Redis broker: publications reach subscribers on every node of a cluster.

Local subscribers get a publication at once, in place, as with the memory
broker (the fast path: no round trip for sockets on the node that made the
frame). Every publication is also queued for Redis and written with the
others queued meanwhile, in one write, at most one every `FLUSH_WINDOW`
(5 ms; at once after a quiet spell): never a round trip per token
(`redis_publisher`). Each node subscribes in Redis to the channels it has
subscribers for, delivers what other nodes publish to them, and skips its own
echo. The publisher's and the subscription's connections are `RedisLink`s:
redis-py opens them, and their replies are then parsed as they arrive, without
a read per reply (`redis_link`); other commands (keys, scripts) go through
redis-py's pool (`client`).

A node publishes to Redis only what another node may receive (`listeners`):
a channel whose last publication reached only this node's own subscription
stays local until another node announces interest, which a node does as soon
as Redis confirms a subscription, before anything that waits for it (a
handover's ask, a join's catch-up) is sent, so the publisher hears it first:
what it published meanwhile is what it hands over or catches the newcomer up
with. Most private streams and every idle session's heartbeat so never reach
Redis.

When Redis goes away the node keeps serving its own sockets; what it could
not publish is counted (`lost`), and its reader reconnects with backoff and
resubscribes every channel at once when Redis is back. Every change of the
link forgets what it knew about channels being alone, announces its interest
again, and learns nothing alone for `RELEARN_AFTER` (10 s), while the other
nodes resubscribe.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from npc_server.brokers import wire
from npc_server.brokers.base import BrokerStatistics, MessageHandler, RemoteObserver, Subscriber
from npc_server.brokers.kept import KeptLocal
from npc_server.brokers.listeners import Listeners
from npc_server.brokers.memory import MemoryBroker
from npc_server.brokers.redis_link import RedisLink, command, open_link
from npc_server.brokers.redis_publisher import Publisher, PublishRefused
from npc_server.cancelling import cancel_and_wait
from npc_server.protocol.frames import ServerFrame
from npc_server.redaction import redacted_reason, redacted_url

log = logging.getLogger(__name__)

PREFIX = "npc:"
MAX_PENDING = 100_000
CONNECT_TIMEOUT = 5.0
MAX_CONNECTIONS = 64  # pooled connections to Redis per node (commands wait for one)
FLUSH_WINDOW = 0.005  # seconds at least between two writes of publications to Redis
BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0
READ_TIMEOUT = 1.0
SYNC = "npc-sync:"
HEALTH = "npc-health"
HEALTH_EVERY = 5.0  # a quiet subscription is pinged this often
HEALTH_TIMEOUT = 15.0  # and given up if nothing comes back for this long
INTEREST = "interest"  # a node's announcement that it now subscribes a channel


class BrokerUnavailable(RuntimeError):
    """Redis cannot be reached."""


def client_options() -> dict[str, Any]:
    """Options for every redis-py connection pool a node makes (this broker's, the memory
    store's): the client's name and version for `CLIENT SETINFO`, given once. Left to
    redis-py, each new connection reads the package's metadata from disk (~0.35 ms, a
    burst of claims opens dozens)."""
    info = _driver_info()
    return {} if info is None else {"driver_info": info}


def reply_text(raw: Any) -> str:
    """A string Redis gave back (a key, a field, a script's answer) as text. What is in
    Redis may be anyone's: bytes that are not UTF-8 are replaced, never raised; a value
    of another type reads as ""."""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    return raw if isinstance(raw, str) else ""


@functools.cache
def _driver_info() -> Any:
    import redis

    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # before redis-py 7.2 the version is read once, at import
        return None
    return DriverInfo(lib_version=redis.__version__)


@dataclass(frozen=True, slots=True)
class RedisStatistics:
    sent: int
    received: int
    rejected: int
    lost: int
    connected: bool
    kept_local: int = 0  # publications not sent: no other node listened on their channel
    alone: int = 0  # channels whose publications stay on this node now
    batches: int = 0  # writes of publications to Redis (each one pipeline)


def check_reachable(url: str) -> None:
    """Before the loop starts: Redis answers at `url`, or `BrokerUnavailable` says why
    (naming the URL without its password: the message goes to stderr)."""
    try:
        import redis
    except ImportError:
        raise BrokerUnavailable(
            "cluster mode needs the redis client: pip install 'npc-server[redis]'"
        ) from None
    where = redacted_url(url)
    try:  # a port out of range, a bad option: redis-py's ValueError, without a traceback
        client = redis.Redis.from_url(
            url, socket_connect_timeout=CONNECT_TIMEOUT, **client_options()
        )
    except ValueError:  # its text may quote a piece of the password (read as a port)
        raise BrokerUnavailable(f"{where} is not a Redis URL redis-py can use") from None
    try:
        client.ping()
        role = _role(client, redis.exceptions.ResponseError)
    except (redis.exceptions.RedisError, OSError) as exc:
        raise BrokerUnavailable(f"cannot reach Redis at {where}: {exc}") from None
    finally:
        client.close()
    if role not in ("", "master", "active-replica"):  # a replica answers PING, then
        # refuses every write (KeyDB's active replicas take writes)
        shown = "replica" if role == "slave" else role  # ROLE's word for one
        raise BrokerUnavailable(
            f"Redis at {where} is a {shown}, not a primary: point it at the primary"
        )


def url_problem(url: str) -> str:
    """Why redis-py refuses `url` ("": it does not), found without connecting.

    redis-py raises its own ValueError or TypeError for a port that is not a
    number, or an option it does not know or cannot read (`?socket_timeout=abc`),
    at `from_url` or at the first connection: checked with the settings, that
    names the file and the key instead of a traceback at start. redis-py's text
    quotes what it could not read, a piece of the password as often as not: a URL
    with one gets `redacted_reason`'s words instead.
    """
    from redis.asyncio import ConnectionPool
    from redis.exceptions import RedisError

    try:
        # Any: whether make_connection is annotated differs between redis-py releases.
        pool: Any = ConnectionPool.from_url(url)
        pool.make_connection()  # built, not connected
    except (ValueError, TypeError, RedisError) as exc:
        return redacted_reason(url, str(exc) or type(exc).__name__)
    except Exception as exc:  # redis-py's own bug on an option (`?retry=1`: AttributeError)
        return redacted_reason(url, f"redis-py cannot read it ({type(exc).__name__})")
    return ""


def _role(client: Any, refused: type[Exception]) -> str:
    """What `ROLE` says the server is ("" when it may not be asked: an ACL, a proxy)."""
    try:
        reply = client.execute_command("ROLE")
    except refused:
        return ""
    first = reply[0] if isinstance(reply, list | tuple) and reply else b""
    return reply_text(first) if isinstance(first, bytes | str) else ""


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError, OSError)


class RedisBroker:
    """A `Broker` whose channels span every node connected to one Redis."""

    def __init__(
        self, url: str, node_id: str, *, on_state: Callable[[bool], None] | None = None
    ) -> None:
        self.url = url
        self.node_id = node_id
        self._on_state = on_state or (lambda connected: None)
        self._local = MemoryBroker()
        self._publisher: Publisher | None = None  # from `start` on
        self._flush_window = FLUSH_WINDOW
        self._remote: set[str] = set()  # channels this node wants from Redis
        self._changed = asyncio.Event()
        self._version = 0  # of `_remote`
        self._synced = -1  # the version Redis has confirmed
        self._synced_event = asyncio.Event()
        self._waiting: list[tuple[int, Callable[[], None], Callable[[], None] | None]] = []
        self._redis: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._syncer: asyncio.Task[None] | None = None
        self._pong_at = 0.0
        self._received = self._rejected = self._lost = 0
        self._number = 0  # of this node's publications
        self._from: dict[str, int] = {}  # origin -> number of its last publication delivered
        self._d_origin, self._d_number = node_id, 0
        self._handlers: dict[str, MessageHandler] = {}
        self._listeners: list[Callable[[bool], None]] = []
        # Redis sends a node its own publications back: known by their first bytes, they
        # are skipped before any decoding (about a third of the Redis path's cost).
        self._own_prefix = wire.origin_prefix(node_id)
        # Channels this node could not publish on -> the number of the last publication lost.
        self._gaps: dict[str, int] = {}
        self._observer: RemoteObserver | None = None
        self._where = Listeners()
        self._alone = self._where.alone  # the same set, read on every publication
        self._kept_local = 0
        self._kept = KeptLocal()  # room talk kept local, for a newcomer not heard yet
        self.connected = False
        self._errors: tuple[type[BaseException], ...] = ()

    # --- Broker -------------------------------------------------------------

    def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        self._local.subscribe(channel, subscriber)
        if channel not in self._remote:
            self._remote.add(channel)
            self._want_sync()
            self._where.subscribed(channel, self._version)

    def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        self._local.unsubscribe(channel, subscriber)
        if channel in self._remote and not self._local.subscriber_count(channel):
            self._remote.discard(channel)
            self._want_sync()
            self._where.unsubscribed(channel)
            self._kept.forget(channel)

    def _want_sync(self) -> None:
        self._version += 1
        self._changed.set()

    @property
    def available(self) -> bool:
        # Connected, and the connection's subscriptions are back: until then frames for
        # this node's sessions would not reach them (a room say would lose its ack).
        return self.connected and self._synced >= 0

    def when_subscribed(
        self, callback: Callable[[], None], failed: Callable[[], None] | None = None
    ) -> None:
        if self._synced >= self._version:
            callback()
        elif not self.connected and failed is not None:
            failed()
        else:
            self._waiting.append((self._version, callback, failed))

    async def wait_subscribed(self) -> None:
        """Wait until Redis delivers every channel subscribed so far (tests, joins)."""
        version = self._version
        while self._synced < version:
            self._synced_event.clear()
            await self._synced_event.wait()

    def publish_nowait(self, channel: str, frame: ServerFrame, exclude: str | None = None) -> None:
        self._number = number = self._number + 1
        self._d_origin, self._d_number = self.node_id, number
        self._local.publish_nowait(channel, frame, exclude)
        if channel in self._alone:
            self._kept_local += 1
            self._kept.keep_nowait(channel, frame, exclude)
        else:
            self._queue(channel, wire.encode_frame(self.node_id, frame, exclude, number))

    def drop_turn_nowait(self, channel: str, turn: str) -> None:
        self._number += 1
        self._local.drop_turn_nowait(channel, turn)
        if channel in self._alone:
            self._kept_local += 1
        else:
            self._queue(channel, wire.encode_drop(self.node_id, turn, self._number))

    def send_nowait(self, node: str, message: Mapping[str, Any]) -> None:
        self.signal_nowait(f"node:{node}", message)

    def signal_nowait(self, channel: str, message: Mapping[str, Any]) -> None:
        self._number += 1
        if channel in self._alone:  # no other node would hear it; this one never does
            self._kept_local += 1
        else:
            self._queue(channel, wire.encode_message(self.node_id, message, self._number))

    def on_message(self, kind: str, handler: MessageHandler) -> None:
        self._handlers[kind] = handler

    def observe_remote(self, observer: RemoteObserver) -> None:
        self._observer = observer

    @property
    def delivering(self) -> tuple[str, int]:
        return (self._d_origin, self._d_number)

    def position(self) -> dict[str, int]:
        return {**self._from, self.node_id: self._number}

    def deliver_local_nowait(self, channel: str, frame: ServerFrame) -> None:
        """Deliver to this node's subscribers only (a frame other nodes make for themselves)."""
        self._local.publish_nowait(channel, frame)

    def add_state_listener(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(connected)` whenever the link to Redis is lost or back."""
        self._listeners.append(listener)

    @property
    def client(self) -> Any:
        """The redis.asyncio client (after `start`), for keys beside the channels."""
        return self._redis

    def subscriber_count(self, channel: str) -> int:
        return self._local.subscriber_count(channel)

    def local_channels(self, prefix: str = "") -> list[str]:
        """The channels this node's subscribers listen on, by prefix."""
        return self._local.channels(prefix)

    def statistics(self) -> BrokerStatistics:
        return self._local.statistics()

    @property
    def flush_window(self) -> float:
        """Seconds at least between two writes of publications to Redis."""
        return self._flush_window

    @flush_window.setter
    def flush_window(self, seconds: float) -> None:
        self._flush_window = seconds
        if self._publisher is not None:
            self._publisher.window = seconds

    def redis_statistics(self) -> RedisStatistics:
        publisher = self._publisher
        return RedisStatistics(
            publisher.sent if publisher else 0,
            self._received,
            self._rejected,
            self._lost,
            self.connected,
            self._kept_local,
            len(self._alone),
            publisher.batches if publisher else 0,
        )

    async def start(self) -> None:
        """Connect, or raise `BrokerUnavailable` saying why."""
        import redis.asyncio as aioredis

        self._errors = _redis_errors()
        # A burst of connects (claims, catch-ups) waits for a pooled connection instead of
        # failing with "Too many connections", which would read as Redis going away.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=MAX_CONNECTIONS,
            timeout=CONNECT_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            health_check_interval=10,
            **client_options(),
        )
        self._redis = aioredis.Redis.from_pool(pool)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self._redis.ping()
        except (*self._errors, TimeoutError) as exc:  # type: ignore[misc]
            await self._redis.aclose()
            where = redacted_url(self.url)
            raise BrokerUnavailable(f"cannot reach Redis at {where}: {exc}") from None
        self._publisher = Publisher(
            pool,
            window=self._flush_window,
            answered=self._answered,
            lost=self._publications_lost,
            heard=lambda: self._where.heard,
            number=lambda: self._number,
        )
        if not await self._publisher.connect():
            await self._redis.aclose()
            raise BrokerUnavailable(f"cannot reach Redis at {redacted_url(self.url)}")
        self._set_connected(True)
        self._reader = asyncio.create_task(self._read(), name="redis-broker-reader")
        try:  # the node channel and a first sync: available from the first socket on
            await asyncio.wait_for(self.wait_subscribed(), CONNECT_TIMEOUT)
        except TimeoutError:
            await self.aclose()
            where = redacted_url(self.url)
            raise BrokerUnavailable(f"Redis at {where} did not confirm a subscription") from None

    async def aclose(self) -> None:
        tasks = (self._reader, self._syncer)
        await cancel_and_wait([t for t in tasks if t is not None])
        if self._publisher is not None:
            await self._publisher.aclose()
        if self._redis is not None:
            await self._redis.aclose()
        self._local = MemoryBroker()

    # --- publishing ---------------------------------------------------------

    def _queue(self, channel: str, data: bytes) -> None:
        # Without Redis, no connect attempt per token: the reader reconnects for everyone.
        publisher = self._publisher
        if not self.connected or publisher is None or len(publisher.pending) >= MAX_PENDING:
            self._lost += 1
            self._gaps[channel] = self._number
            return
        publisher.add_nowait(PREFIX + channel, data)

    def _answered(self, channels: list[str], receivers: list[Any], heard: int) -> None:
        self._where.answered((c[len(PREFIX) :] for c in channels), receivers, heard)

    def _publications_lost(self, lost: list[tuple[str, int]], exc: BaseException) -> None:
        self._lost += len(lost)
        gaps = self._gaps
        for c, upto in lost:  # a later publication may be recorded lost already: keep it
            channel = c.removeprefix(PREFIX)
            gaps[channel] = max(upto, gaps.get(channel, upto))
        if not isinstance(exc, PublishRefused):  # the link failed, not one publication
            self._set_connected(False)
        log.warning("Redis publish failed (%s); %d publications lost", exc, len(lost))

    # --- receiving ----------------------------------------------------------

    async def _read(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            try:
                link = await open_link(self._redis.connection_pool, self._on_reply)
            except self._errors as exc:
                self._set_connected(False)
                log.warning("Redis cannot be reached (%s); retrying in %.1f s", exc, backoff)
            else:
                try:
                    await self._serve(link)
                except self._errors as exc:
                    self._set_connected(False)
                    log.warning("Redis subscription lost (%s); retrying in %.1f s", exc, backoff)
                    if self._publisher is not None:  # the path to Redis may be gone for both
                        self._publisher.drop_link_nowait()
                finally:
                    link.close()
            # Jittered, growing waits: a cluster that lost Redis does not return in a storm.
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(BACKOFF_MAX, backoff * 2)
            if await self._reachable():
                backoff = BACKOFF_MIN
                # Idle pooled connections to the Redis that went away fail on first use:
                # drop them, so the first commands after a restart do not fail.
                with contextlib.suppress(Exception):
                    await self._redis.connection_pool.disconnect(inuse_connections=False)

    async def _reachable(self) -> bool:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self._redis.ping()
        except (*self._errors, TimeoutError):  # type: ignore[misc]
            return False
        return True

    async def _serve(self, link: RedisLink) -> None:
        # A node channel keeps the connection subscribed even with no sessions.
        link.write(command("SUBSCRIBE", f"{PREFIX}node:{self.node_id}"))
        # Subscriptions of the connection that went away count for nothing now, and
        # whoever waits for a subscription waits for this connection's.
        self._where.new_connection(self._version)
        self._synced = -1
        assert self._publisher is not None
        await self._publisher.connect()
        self._set_connected(True)
        self._report_gaps()
        self._changed.set()  # (re)subscribe every channel on a new connection
        syncer = asyncio.create_task(self._keep_synced(link), name="redis-broker-sync")
        self._syncer = syncer
        # Replies are handled as they arrive (`_on_reply`), with no read per reply: this
        # task watches over the link instead.
        self._pong_at = time.monotonic()
        try:
            while True:
                await asyncio.wait(
                    {link.closed, syncer}, timeout=READ_TIMEOUT, return_when="FIRST_COMPLETED"
                )
                if link.closed.done():
                    link.closed.result()  # its error ends this connection
                if syncer.done():
                    syncer.result()
                    raise ConnectionError("the Redis subscription stopped")
                self._check_link(link)
                assert self._publisher is not None
                self._publisher.check_nowait(HEALTH_EVERY, HEALTH_TIMEOUT)
                if not self.connected and await self._reachable():
                    self._set_connected(True)  # a publish failed, but Redis answers again
                    self._report_gaps()
                elif self.connected and self._gaps:  # lost with the link up (refused, full)
                    self._report_gaps()
        finally:
            await cancel_and_wait([syncer])

    def _on_reply(self, reply: Any) -> None:
        if isinstance(reply, Exception):  # an error reply: this link cannot be trusted
            raise ConnectionError(f"Redis answered the subscription with an error: {reply}")
        try:
            if isinstance(reply, list) and reply:
                kind = reply[0]
                if kind == b"message" and len(reply) == 3:
                    self._deliver(reply[1], reply[2])
                elif kind == b"pong" and len(reply) == 2:  # RESP2, subscribed: a PING's answer
                    self._ponged(reply[1])
        except Exception:  # one publication's delivery must not end the subscription
            self._rejected += 1
            log.exception("a reply from Redis could not be delivered")

    def _ponged(self, data: bytes) -> None:
        self._pong_at = time.monotonic()
        self._confirmed(data)

    def _check_link(self, link: RedisLink) -> None:
        now = time.monotonic()
        if now - self._pong_at > HEALTH_TIMEOUT:  # a Redis that stopped answering
            raise ConnectionError(f"no answer from Redis for {HEALTH_TIMEOUT:g} s")
        if now - self._pong_at > HEALTH_EVERY:
            link.write(command("PING", HEALTH))

    async def _keep_synced(self, link: RedisLink) -> None:
        subscribed: set[str] = set()
        while True:
            await self._changed.wait()
            self._changed.clear()
            version, wanted = self._version, set(self._remote)
            added, removed = wanted - subscribed, subscribed - wanted
            commands = []
            if added:
                commands.append(command("SUBSCRIBE", *(PREFIX + c for c in sorted(added))))
            if removed:
                commands.append(command("UNSUBSCRIBE", *(PREFIX + c for c in sorted(removed))))
            # Its PONG, read after the SUBSCRIBE's replies, says Redis has applied it.
            commands.append(command("PING", f"{SYNC}{version}"))
            link.write(b"".join(commands))
            subscribed = wanted

    def _confirmed(self, data: Any) -> None:
        text = data.decode() if isinstance(data, bytes) else str(data)
        if text.startswith(SYNC) and text[len(SYNC) :].isascii() and text[len(SYNC) :].isdigit():
            self._synced = max(self._synced, int(text[len(SYNC) :]))
            self._synced_event.set()
            self._went_live(self._synced)
            ready = [cb for version, cb, _ in self._waiting if version <= self._synced]
            self._waiting = [w for w in self._waiting if w[0] > self._synced]
            for callback in ready:
                callback()

    def _went_live(self, version: int) -> None:
        # Announced before any callback waiting for the subscription runs, so that what it
        # sends (an ask, a catch-up) reaches the publisher after the announcement.
        self._announce(self._where.confirmed(version))

    def _announce(self, channels: list[str]) -> None:
        for channel in channels:
            self.signal_nowait(channel, {"k": INTEREST})

    def _deliver(self, raw_channel: bytes | str, data: Any) -> None:
        if isinstance(data, bytes) and data.startswith(self._own_prefix):
            return  # delivered locally when published
        channel = raw_channel.decode() if isinstance(raw_channel, bytes) else raw_channel
        try:
            publication = wire.decode(data)
        except wire.WireError as exc:
            self._rejected += 1
            log.warning("dropped a publication on %s from Redis: %s", channel, exc)
            return
        origin = publication.origin
        if origin == self.node_id:
            return  # delivered locally when published
        if publication.number <= self._from.get(origin, 0):
            return  # a batch written again after a failure: delivered already
        message = publication.message
        if message is not None and message["k"] == INTEREST:
            self._from[origin] = publication.number
            self._heard_interest(channel.removeprefix(PREFIX))
            return
        self._received += 1
        self._from[origin] = publication.number
        local = channel.removeprefix(PREFIX)
        frame = publication.frame
        if frame is not None:
            self._d_origin, self._d_number = origin, publication.number
            if self._observer is None or self._observer(origin, publication.number, local, frame):
                self._local.publish_nowait(local, frame, publication.exclude)
        elif publication.drop_turn is not None:
            self._local.drop_turn_nowait(local, publication.drop_turn)
        elif message is not None:
            self._dispatch(origin, message)

    def _heard_interest(self, channel: str) -> None:
        # What was kept local on the channel just before is published now, as new
        # publications (numbers only grow), ahead of anything published after this.
        self._where.interest(channel)
        for frame, exclude in self._kept.take(channel):
            self._number += 1
            self._queue(channel, wire.encode_frame(self.node_id, frame, exclude, self._number))

    def _dispatch(self, origin: str, message: dict[str, Any]) -> None:
        handler = self._handlers.get(message["k"])
        if handler is None:
            self._rejected += 1
            log.warning("dropped a message of unknown kind %r from node %s", message["k"], origin)
            return
        try:
            handler(origin, message)
        except Exception:  # another node's message must never end this node's reader
            self._rejected += 1
            log.warning("a message %r from node %s failed", message["k"], origin, exc_info=True)

    def _report_gaps(self) -> None:
        # Nodes relaying this node's turns on these channels end them: frames were lost.
        gaps, self._gaps = self._gaps, {}
        for channel, upto in sorted(gaps.items()):
            if not channel.startswith("node:"):
                self.signal_nowait(channel, {"k": "gap", "channel": channel, "upto": upto})

    def _set_connected(self, connected: bool) -> None:
        if not connected:  # a subscription that was not confirmed will not be, soon
            failing = [failed for _, _, failed in self._waiting if failed is not None]
            self._waiting = [w for w in self._waiting if w[2] is None]
            for failed in failing:
                failed()
        if connected != self.connected:
            self.connected = connected
            # What was learnt about listeners may be stale, and an announcement of this
            # node's may have been lost: learn again, announce again.
            self._kept.forget_all()  # frames published from now on must not be overtaken
            self._announce(self._where.link_changed(connected))
            self._on_state(connected)
            for listener in self._listeners:
                listener(connected)
