"""A raw link to Redis: one connection whose replies are parsed as they arrive.

redis-py's asyncio client reads each reply with an awaited `read_response`: a
task wake-up, a timeout context and a dozen calls per reply. On the two
connections a node uses for every token that crosses nodes (the publisher's
and the subscription's), that was most of the Redis path's CPU
(benchmarks/README.md, "Issue 10"). A `RedisLink` takes over a connection that
redis-py opened, so that the URL, AUTH, TLS and the handshake stay redis-py's,
and then parses whatever arrives with one `hiredis.Reader` in `data_received`,
handing each reply to a callback at once: no task, no await per reply.
Commands are written as RESP in one buffer, without waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# hiredis answers this when what it was fed holds no complete reply yet.
_MORE = object()


class LinkError(ConnectionError):
    """The link is closed, or Redis sent what is not RESP."""


def command(*args: str | bytes) -> bytes:
    """One Redis command as RESP."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def publish_commands(batch: list[tuple[str, bytes]]) -> bytes:
    """`PUBLISH channel data` for each publication, as RESP, in one buffer."""
    parts: list[bytes] = []
    for channel, data in batch:
        name = channel.encode()
        parts.append(b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n" % (len(name), name, len(data)))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


class RedisLink(asyncio.Protocol):
    """One connection to Redis: `write` commands, each reply goes to `on_reply`, in order.

    An error reply reaches `on_reply` as a `hiredis.ReplyError` value. `closed` is done
    once the connection is gone (with the reason as its exception, if any).
    """

    def __init__(self, on_reply: Callable[[Any], None]) -> None:
        import hiredis

        self._on_reply = on_reply
        self._reader = hiredis.Reader(notEnoughData=_MORE)
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.paused = False  # the kernel's buffer is full: write no more until resumed
        self.on_resume: Callable[[], None] = lambda: None
        self.keep: object = None  # what must live as long as the connection (`open_link`)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's: no subclass

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            reply = reader.gets(False)
            while reply is not _MORE:
                self._on_reply(reply)
                reply = reader.gets(False)
        except Exception as exc:  # not RESP (hiredis.ProtocolError), or a handler refused it
            # A handler's ConnectionError says why; anything else is a bug worth its trace.
            log.warning("closing a Redis link: %s", exc, exc_info=not isinstance(exc, OSError))
            self._lose(LinkError(f"Redis link failed: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self.closed.done():
            self.closed.set_exception(LinkError(f"Redis closed the connection ({exc})"))
            self.closed.exception()  # retrieved here: readers look at `is_open`

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.on_resume()

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self.closed.done()

    def write(self, data: bytes) -> None:
        """Send `data` (RESP commands) now; `LinkError` if the link is closed."""
        if self._transport is None or self._transport.is_closing():
            raise LinkError("the Redis link is closed")
        self._transport.write(data)

    def close(self) -> None:
        self._lose(None)

    def abort(self, reason: str) -> None:
        """Drop the connection now (it cannot be trusted): `closed` says `reason`."""
        self._lose(LinkError(reason))

    def _lose(self, exc: Exception | None) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort() if exc is not None else transport.close()
        if not self.closed.done():
            self.closed.set_exception(exc or LinkError("the Redis link was closed"))
            self.closed.exception()


async def open_link(pool: Any, on_reply: Callable[[Any], None], within: float = 5.0) -> RedisLink:
    """A `RedisLink` on a new connection made with `pool`'s settings (a redis-py asyncio
    pool: URL, password, TLS), in at most `within` seconds, handshake included.

    redis-py connects and authenticates; then the link owns the socket. Raises
    redis-py's connection errors, `OSError` or `TimeoutError` when Redis cannot be reached.
    """
    connection = _connection(pool)
    try:
        async with asyncio.timeout(within):
            await connection.connect()
    except BaseException:
        await connection.disconnect()
        raise
    writer = getattr(connection, "_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is None or not hasattr(transport, "set_protocol"):
        await connection.disconnect()
        raise LinkError("redis-py's connection has no transport to take over")
    leftover = _buffered(connection)
    # redis-py would close the socket when its connection object is collected, and
    # asyncio when the StreamWriter is: redis-py no longer has them, the link keeps the
    # writer until it closes the transport itself.
    connection._writer = connection._reader = None
    link = RedisLink(on_reply)
    link.keep = writer
    transport.set_protocol(link)
    link.connection_made(transport)
    if leftover:
        link.data_received(leftover)
    return link


def _connection(pool: Any) -> Any:
    """A redis-py connection like `pool`'s, speaking RESP2 with no server notices: the
    link's readers expect each reply to answer a command or be a subscription's message
    (RESP3, redis-py 8's default, adds pushes, and maintenance notices on some servers)."""
    kwargs = {**pool.connection_kwargs, "protocol": 2}
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:  # redis-py before 7: no notices to turn off
        pass
    else:
        kwargs["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
        kwargs.pop("maint_notifications_pool_handler", None)
    return pool.connection_class(**kwargs)


def _buffered(connection: Any) -> bytes:
    """Bytes redis-py read past the handshake (none, normally): the link parses them."""
    stream = getattr(connection, "_reader", None)
    buffered = getattr(stream, "_buffer", b"")
    return bytes(buffered)
