"""A bounded keep-alive pool of HTTP/1.1 connections per origin, and streamed responses.

`ConnectionPool` keeps the connections (http_connection.py) of one origin
(scheme, host, port): at most `max_connections` open, every finished one
kept alive for the next request (so the pool grows to the NPC's peak
concurrency and stays there), idle ones dropped after `keepalive_s`. A
reused connection the server had closed meanwhile is replaced at once,
before anything was read. A response not read to its end is never pooled:
`close()` drops its connection, so the model server sees the client leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable

from npc_server.backends.http1 import ResponseHead
from npc_server.backends.http_connection import (
    BodyCut,
    ConnectFailed,
    ConnectTimedOut,
    H1Connection,
    Origin,
    PoolTimedOut,
    StaleConnection,
    TransportError,
)

__all__ = [
    "BodyCut",
    "ConnectFailed",
    "ConnectTimedOut",
    "ConnectionPool",
    "Origin",
    "PoolTimedOut",
    "StreamResponse",
    "TransportError",
]

KEEPALIVE_S = 5.0  # as httpx: servers such as uvicorn close idle connections after 5 s


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

    def listen(
        self, listener: Callable[[], None] | None, sink: Callable[[bytes], bool] | None = None
    ) -> None:
        """Have `listener()` called in the connection's callbacks when more of the body
        (or its end, or a failure) has arrived; None stops it. A `sink` is offered the
        bytes first, as they arrive (`H1Connection.listen`). Neither may raise."""
        assert self._conn is not None, "read after close"
        self._conn.listen(listener, sink)

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
            conn.listen(None)
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
            except StaleConnection:
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
