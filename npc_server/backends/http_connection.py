"""One HTTP/1.1 connection on a plain asyncio protocol, and the errors of a request.

The `openai` backend's stream used to be read through httpx -> httpcore -> h11
-> anyio: per read a cancel scope, a timer, dicts and library lookups, more
CPU than the rest of the relay path. Here a connection is an
`asyncio.Protocol` whose `data_received` feeds the sans-I/O `ResponseParser`
(http1.py) and wakes the one reader waiting, with one future per wake-up; the
reader takes every body byte buffered so far in one call. `http_pool.py`
keeps these connections.

    TransportError
    ├── ConnectFailed     no connection, or it ended before a response head
    ├── ConnectTimedOut   the TCP (and TLS) connect took over the connect timeout
    ├── PoolTimedOut      every connection stayed busy for the connect timeout
    └── BodyCut           the connection ended, or broke HTTP, mid-body
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from npc_server.backends.http1 import ProtocolError, ResponseHead, ResponseParser

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


class StaleConnection(Exception):
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


class LossListener(Protocol):
    """Told when a connection closes (its pool)."""

    def lost_nowait(self, conn: H1Connection) -> None: ...


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
        # Called where a waiter would be woken (bytes, end, failure), in the callback itself.
        self._listener: Callable[[], None] | None = None
        # Offered body bytes as they arrive while none are buffered (see `listen`).
        self._sink: Callable[[bytes], bool] | None = None
        self.closed = False
        self.idle_since = 0.0
        self.pooled = False  # waiting in its pool's idle list
        self.pool: LossListener | None = None  # told when the connection closes

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
                sink = self._sink
                if sink is not None and not self._body and parser.error is None and sink(body):
                    # Taken whole, as a read would have: wake only for a waiter or the end.
                    if self._waiter is None and not parser.complete:
                        return
                else:
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
        self._listener = None
        self._sink = None
        self._got_bytes = False
        self.transport.write(data)

    async def receive_head(self, reused: bool) -> ResponseHead:
        """The response head; `StaleConnection` when a reused connection ended before any byte."""
        parser = self._parser
        assert parser is not None
        while parser.head is None:
            if self._error is not None or self.closed:
                if reused and not self._got_bytes:
                    raise StaleConnection
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

    def listen(
        self, listener: Callable[[], None] | None, sink: Callable[[bytes], bool] | None = None
    ) -> None:
        """Call `listener()` whenever a waiter would be woken (None: stop).

        With a `sink`, body bytes that arrive while none are buffered are first
        offered to `sink(data)`: True means it took them (as `read_nowait` would
        have returned them), and then `listener()` runs only at the body's end;
        False leaves them buffered, as without a sink. Both run inside
        `data_received` and the other callbacks, so they must not raise.
        """
        self._listener = listener
        self._sink = sink

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
        listener = self._listener
        if listener is not None:
            listener()
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
