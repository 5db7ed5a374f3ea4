"""HTTP/1.1 requests with streamed responses on plain asyncio protocols, pooled per origin.

The `openai` backend's stream used to be read through httpx -> httpcore -> h11
-> anyio: per read a cancel scope, a timer, dicts and library lookups, more
CPU than the rest of the relay path. Here a connection is an
`asyncio.Protocol` whose `data_received` feeds the sans-I/O `ResponseParser`
(http1.py) and wakes the one reader waiting, with one future per wake-up; the
reader takes every body byte buffered so far in one call.

`ConnectionPool` keeps the connections of one origin (scheme, host, port):
at most `max_connections` open, every finished one kept alive for the next
request (so the pool grows to the NPC's peak concurrency and stays there),
idle ones dropped after `keepalive_s`. A reused connection the server had
closed meanwhile is replaced once, at once, before anything was read. A
response not read to its end is never pooled: `close()` drops its
connection, so the model server sees the client leave.

Errors (see the tree) say where a request failed; the backend maps them to
player-safe messages.

    TransportError
    ├── ConnectFailed     no connection, or it ended before a response head
    ├── ConnectTimedOut   the TCP (and TLS) connect took over the connect timeout
    ├── PoolTimedOut      every connection stayed busy for the connect timeout
    └── BodyCut           the connection ended, or broke HTTP, mid-body
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

from npc_server.backends.http1 import ProtocolError, ResponseHead, ResponseParser

KEEPALIVE_S = 5.0  # as httpx: servers such as uvicorn close idle connections after 5 s
HIGH_WATER = 1 << 20  # body bytes buffered unread before the socket stops being read


class TransportError(Exception):
    """A request failed below the HTTP semantics."""


class ConnectFailed(TransportError):
    """No connection could be made, or it ended before a response head."""


class ConnectTimedOut(TransportError):
    """The connect (TCP and TLS) took longer than the connect timeout."""


class PoolTimedOut(TransportError):
    """Every connection stayed busy for the connect timeout."""


class BodyCut(TransportError):
    """The connection ended or broke HTTP framing while the body streamed."""


class _Stale(Exception):
    """A reused connection ended before any byte of the response: retry on a new one."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: scheme, host and port, and the path prefix of the base URL."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Origin:
        """The origin of an http(s) URL; ValueError when it is not one."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path or "/")

    @property
    def host_header(self) -> str:
        """The Host header's value (the port only when it is not the scheme's own)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


class H1Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, its body buffered until read."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._parser: ResponseParser | None = None
        self._body: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._got_bytes = False  # a byte of the current response arrived
        self._error: ProtocolError | OSError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.idle_since = 0.0
        self.pooled = False  # waiting in its pool's idle list
        self.pool: ConnectionPool | None = None  # told when the connection closes

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # bytes while idle: the connection cannot be trusted
            self.close()
            return
        self._got_bytes = True
        try:
            body = parser.feed(data)
        except ProtocolError as exc:
            self._error = exc
            self.close()
        else:
            if body:
                self._body.append(body)
                self._buffered += len(body)
                if self._buffered > HIGH_WATER and not self._paused and self.transport:
                    self._paused = True
                    self.transport.pause_reading()
            if parser.error is not None:  # broken after that body: it is still read first
                self._error = parser.error
                self.close()
        self._wake()

    def eof_received(self) -> bool | None:
        if self._parser is not None:
            try:
                self._parser.feed_eof()
            except ProtocolError as exc:
                self._error = exc
        self._wake()
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._error is None and isinstance(exc, OSError):
            self._error = exc
        self._wake()
        if self.pool is not None:
            self.pool.lost_nowait(self)

    # The request

    def send_nowait(self, data: bytes) -> None:
        """Write a whole request; its response is read from here on."""
        assert self.transport is not None
        self._parser = ResponseParser()
        self._got_bytes = False
        self.transport.write(data)

    async def receive_head(self, reused: bool) -> ResponseHead:
        """The response head; `_Stale` when a reused connection ended before any byte."""
        parser = self._parser
        assert parser is not None
        while parser.head is None:
            if self._error is not None or self.closed:
                if reused and not self._got_bytes:
                    raise _Stale
                raise ConnectFailed("the server closed the connection without a response")
            await self.readable()
        return parser.head

    def read_nowait(self) -> bytes | None:
        """The body bytes buffered (b"" when none yet), None at the body's end; or `BodyCut`."""
        if self._body:
            body = self._body
            data = body[0] if len(body) == 1 else b"".join(body)
            body.clear()
            self._buffered = 0
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            return data
        parser = self._parser
        if parser is not None and parser.complete:
            return None
        if self._error is not None:
            raise BodyCut(str(self._error))
        if self.closed:
            raise BodyCut("the connection closed mid-body")
        return b""

    def readable(self) -> asyncio.Future[None]:
        """A future done at the next bytes, end or failure (one waiter at a time)."""
        waiter = self._waiter = self._loop.create_future()
        return waiter

    @property
    def complete(self) -> bool:
        """The current response was read to its end."""
        return self._parser is not None and self._parser.complete

    def reusable_nowait(self) -> bool:
        """Open, idle, and its last response ended cleanly: it may carry another request."""
        parser = self._parser
        transport = self.transport
        if self.closed or self._error is not None or transport is None:
            return False
        return not transport.is_closing() and (parser is None or parser.reusable)

    def close(self) -> None:
        """Close the socket (the server sees the client leave)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)


class StreamResponse:
    """A response whose head is in and whose body is read as it arrives."""

    __slots__ = ("_conn", "_pool", "head")

    def __init__(self, pool: ConnectionPool, conn: H1Connection, head: ResponseHead) -> None:
        self._pool = pool
        self._conn: H1Connection | None = conn
        self.head = head

    def read_nowait(self) -> bytes | None:
        """Body bytes buffered so far (b"" if none), None at the end; raise `BodyCut`."""
        assert self._conn is not None, "read after close"
        return self._conn.read_nowait()

    def readable(self) -> asyncio.Future[None]:
        """Done when more of the body (or its end, or a failure) has arrived."""
        assert self._conn is not None, "read after close"
        return self._conn.readable()

    @property
    def complete(self) -> bool:
        """The body was read to its end."""
        return self._conn is not None and self._conn.complete

    async def read_all(self, limit: int) -> bytes:
        """The rest of the body, at most `limit` bytes (an error body); BodyCut if cut."""
        parts: list[bytes] = []
        size = 0
        while size < limit and (data := self.read_nowait()) is not None:
            if data:
                parts.append(data)
                size += len(data)
            else:
                await self.readable()
        return b"".join(parts)[:limit]

    def close(self) -> None:
        """Back to the pool when read to the end; otherwise the connection is dropped."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release_nowait(conn)


class ConnectionPool:
    """Keep-alive connections to one origin, at most `max_connections` open at once."""

    def __init__(
        self,
        origin: Origin,
        *,
        max_connections: int,
        connect_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        if origin.scheme == "https" and ssl_context is None:
            ssl_context = ssl.create_default_context()
        self.origin = origin
        self._ssl = ssl_context if origin.scheme == "https" else None
        self._max = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._idle: deque[H1Connection] = deque()  # oldest first
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self.connections_made = 0

    @property
    def open_connections(self) -> int:
        """Connections open now, busy or idle."""
        return self._open

    @property
    def idle_connections(self) -> int:
        """Connections waiting for a request."""
        return len(self._idle)

    async def request(self, data: bytes) -> StreamResponse:
        """Send a whole request (head and body); the response once its head is in.

        A reused connection found dead is closed and the next one tried (after a
        server restart, every idle one is), ending with a new connection.
        """
        while True:
            conn, reused = await self._acquire()
            try:
                conn.send_nowait(data)
                head = await conn.receive_head(reused)
            except _Stale:
                conn.close()
                continue
            except BaseException:
                conn.close()
                raise
            return StreamResponse(self, conn, head)

    def release_nowait(self, conn: H1Connection) -> None:
        """A connection whose response is over: kept for the next request, or closed."""
        if self._closed or not conn.reusable_nowait():
            conn.close()
            return
        conn.idle_since = asyncio.get_running_loop().time()
        conn.pooled = True
        self._idle.append(conn)
        self._wake_one()

    def lost_nowait(self, conn: H1Connection) -> None:
        """A connection closed (either side): its slot is free."""
        self._open -= 1
        if conn.pooled:
            conn.pooled = False
            self._idle.remove(conn)
        self._wake_one()

    async def aclose(self) -> None:
        """Close the idle connections; busy ones close when their response is done."""
        self._closed = True
        while self._idle:
            conn = self._idle.pop()
            conn.pooled = False
            conn.close()

    async def _acquire(self) -> tuple[H1Connection, bool]:
        while True:
            self._expire()
            while self._idle:
                conn = self._idle.pop()  # the most recently used: the least likely stale
                conn.pooled = False
                if conn.reusable_nowait():
                    return conn, True
                conn.close()
            if self._open < self._max:
                return await self._connect(), False
            await self._slot()

    def _expire(self) -> None:
        idle = self._idle
        if idle:
            oldest = asyncio.get_running_loop().time() - self._keepalive_s
            while idle and idle[0].idle_since < oldest:
                conn = idle.popleft()
                conn.pooled = False
                conn.close()

    async def _slot(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await waiter
        except TimeoutError:
            raise PoolTimedOut(f"all {self._max} connections stayed busy") from None
        finally:
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):  # a woken waiter was popped already
                self._waiters.remove(waiter)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self) -> H1Connection:
        origin = self.origin
        loop = asyncio.get_running_loop()
        self._open += 1
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(
                    H1Connection,
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                    server_hostname=origin.host if self._ssl else None,
                )
        except TimeoutError:
            self._lost_before_use()
            raise ConnectTimedOut(f"no connection within {self._connect_timeout_s:g} s") from None
        except OSError as exc:
            self._lost_before_use()
            raise ConnectFailed(str(exc)) from None
        except BaseException:
            self._lost_before_use()
            raise
        self.connections_made += 1
        if conn.closed:  # lost between the connect and now
            self._lost_before_use()
            raise ConnectFailed("the connection closed at once")
        conn.pool = self
        return conn

    def _lost_before_use(self) -> None:
        self._open -= 1
        self._wake_one()
