"""Adjustments to Hypercorn 0.17-0.18 (and the wsproto and h11 under it).

Each answers a trap measured in HYPERCORN-NOTES.md, by our stress tests or in
issue 12; `install_fixes()` installs all but 4 once per process (`serve.py`
does it), after checking the versions and that every patched attribute exists:

1. A client's close code reaches the app. Hypercorn answers the close
   handshake itself and then tells the app `websocket.disconnect` with 1006
   whenever the app had not closed first, so a player who quits (1000) looked
   like a dropped network and their session lingered for the resume window.
2. The kernel's ETIMEDOUT while closing or writing is not an unhandled error.
   With TCP_USER_TIMEOUT the kernel drops a peer that stopped reading, and
   `wait_closed()` or the `drain()` after Hypercorn's own write (a pong, a
   close frame) raises `TimeoutError`, which Hypercorn does not expect: the
   write's was an ERROR traceback per stalled client, from its task group.
3. A finished app lets go of its socket. Hypercorn feeds client messages into
   a bounded queue (10) that only the app reads; when the app has returned
   after closing a socket whose client kept sending, Hypercorn's reader stayed
   blocked on that full queue for ever and the socket sat in CLOSE_WAIT.
4. permessage-deflate can be refused. Hypercorn always accepts it when a
   browser offers it: ~20% of throughput and ~100 KB of zlib state per socket.
5. A WebSocket protocol violation is answered with a close frame. wsproto
   reports a bad frame (unmasked, bad opcode or UTF-8, ...) as a close event
   with 1002 or 1007 but stays OPEN, so Hypercorn dropped TCP without sending
   it; RFC 6455 7.1.7 says to send that close frame first. (Part of fix 1's
   event handler, which already sorts the close events.) The app is told such
   closes, and Hypercorn's own 1009 for a message over the size limit, as the
   server's (`FAILED_HERE` in the disconnect message): it heard of the 1009 only
   from the client's echo, and counted both as the client's close codes.
6. A request with both Content-Length and Transfer-Encoding ends its
   connection after the response (RFC 9112 6.3: a smuggling attempt). h11
   lets Transfer-Encoding win, as it should, but kept the connection alive.
7. Binary messages can skip Hypercorn's per-message path. Each `send` goes
   through `app_send`, wsproto's serialisation, `stream_send` and a lock with
   `drain()`: about the whole per-token budget of issue 11. `direct_writes()`
   hands the socket edge the connection's transport to write its own frames
   to (`transports/framing.py`), or None, with the reason logged, wherever
   the path is not the one checked here (another worker class, HTTP/2, an
   extension such as permessage-deflate). Not a patch: nothing of Hypercorn's
   changes, so its own writes (pongs, close frames) go on as before.
8. Frames the app never sees are bounded. The app's rate limit counts whole
   messages; wsproto and Hypercorn parse fragments and control frames below
   it, so one socket sending pings, or a message that never ends in empty
   continuation frames, kept a core busy and the other players waiting
   (seconds of lag) without limit. Such frames (pings, pongs, unfinished
   message frames) now take from a bucket per socket (`FRAME_BURST`,
   refilled at `FRAME_RATE` a second); past it the socket closes with 4029,
   as the app's flood close does.
9. HTTP/1.1 only. With `h2` installed (Hypercorn requires it), Hypercorn
   switched a cleartext connection to HTTP/2 on an `Upgrade: h2c` request or
   the HTTP/2 preface (`PRI * HTTP/2.0`): a second protocol stack facing the
   internet that the fixes above, the tests and deploy/ never meant to serve
   (an h2 connection's streams bypass fixes 1, 7 and 8's paths). An h2c
   upgrade is now ignored (answered in HTTP/1.1, as Hypercorn already does
   for one with a body) and the preface is a 505 that closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

import h11
import h11._connection
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.events import Closed
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import ASGIWebsocketState, Handshake, WSStream
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import CloseConnection, Message, Ping, Pong

from npc_server.protocol.codes import CloseCode
from npc_server.transports.framing import binary_frames

log = logging.getLogger(__name__)

# The versions whose internals these fixes were written against and tested with.
SUPPORTED = {
    "hypercorn": ((0, 17), (0, 19)),
    "wsproto": ((1, 2), (1, 4)),
    "h11": ((0, 14), (0, 17)),
}

_installed = False


class UnsupportedDependency(RuntimeError):
    """A patched dependency is outside the tested versions or lacks a patched attribute."""


def check_dependencies() -> None:
    """Refuse to patch versions or internals the fixes were not written for."""
    for name, (low, below) in SUPPORTED.items():
        found = tuple(int(part) for part in version(name).split(".")[:2])
        if not low <= found < below:
            raise UnsupportedDependency(
                f"{name} {version(name)} is not supported by npc_server/hypercorn_fixes.py "
                f"(needs >= {low[0]}.{low[1]}, < {below[0]}.{below[1]})"
            )
    needed: list[tuple[object, str]] = [
        (WSStream, "_handle_events"),
        (WSStream, "app_send"),
        (WSStream, "_send_wsproto_event"),
        (TCPServer, "_close"),
        (Handshake, "accept"),
        (Connection(ConnectionType.SERVER), "_events"),
        (h11._connection, "_keep_alive"),
        # Fix 7 follows app_send -> stream_send -> protocol_send to the transport.
        (H11Protocol, "stream_send"),
        (TCPServer, "protocol_send"),
        (ASGIWebsocketState, "CONNECTED"),
        (Connection(ConnectionType.SERVER), "_proto"),
        (H11Protocol, "_check_protocol"),  # fix 9
        (ProtocolWrapper, "handle"),
    ]
    for owner, attribute in needed:
        if not hasattr(owner, attribute):
            raise UnsupportedDependency(f"{owner!r} has no {attribute!r} to patch")


def install_fixes() -> None:
    """Install fixes 1-3, 5, 6, 8 and 9 and allow 7; idempotent."""
    global _installed
    if _installed:
        return
    check_dependencies()
    _installed = True
    _pass_client_close_codes()  # and fix 8, in the same pass over the events
    _guard_close_timeouts()
    _guard_write_timeouts()
    _release_finished_apps()
    _close_ambiguous_requests()
    _serve_http1_only()


# The key of a `websocket.disconnect` whose code the server's WebSocket layer sent.
FAILED_HERE = "npc_server.failed_here"


def _pass_client_close_codes() -> None:
    original = WSStream._handle_events

    async def _handle_events(self: WSStream) -> None:
        # wsproto's events() yields its `_events` deque before parsing new frames,
        # so what is not a close can be handed back to Hypercorn's own handler.
        events = list(self.connection.events())
        if _over_budget(self, events):
            await _close_flooded(self)
            return
        closes = [e for e in events if isinstance(e, CloseConnection)]
        if not closes:
            self.connection._events.extendleft(reversed(events))
            was_open = self.connection.state == ConnectionState.OPEN
            await original(self)
            if (
                was_open
                and self.connection.state == ConnectionState.LOCAL_CLOSING
                and self.state != ASGIWebsocketState.CLOSED  # the app's own close, meanwhile
                and self.app_put is not None
            ):
                # Hypercorn sent a close of its own: its only one is 1009, for a message
                # over websocket_max_message_size. Tell the app now, as the server's close
                # (it heard of it only from the client's echo, as the client's 1009).
                await self.app_put(
                    {"type": "websocket.disconnect", "code": 1009, FAILED_HERE: True}
                )
            return
        # Tell the app the client's own code first; Hypercorn's later 1006 is then ignored.
        before = events[: events.index(closes[0])]
        self.connection._events.extendleft(reversed(before))
        await original(self)
        # Still OPEN: no close frame came, wsproto failed the connection itself (1009 for
        # a message too big, 1002, 1007) and sends that code: the app must not count it
        # as the client's.
        failed_here = self.connection.state == ConnectionState.OPEN
        if self.app_put is not None:
            message = {"type": "websocket.disconnect", "code": closes[0].code}
            if failed_here:
                message[FAILED_HERE] = True
            await self.app_put(message)
        if self.connection.state == ConnectionState.REMOTE_CLOSING:
            await self._send_wsproto_event(closes[0].response())
        elif self.connection.state == ConnectionState.OPEN:
            # Fix 5: no close frame came, wsproto failed the connection itself.
            await self._send_wsproto_event(CloseConnection(code=closes[0].code))
        await self.send(StreamClosed(stream_id=self.stream_id))

    WSStream._handle_events = _handle_events  # type: ignore[method-assign]


async def _drop(message: Any) -> None:
    return None


def _release_finished_apps() -> None:
    original = WSStream.app_send

    async def app_send(self: WSStream, message: Any) -> None:
        if message is None and self.app_put is not None:
            # The app is gone: nothing may wait on its queue any more. Emptying it
            # wakes a put already blocked on it; later messages are dropped.
            queue = getattr(self.app_put, "__self__", None)
            self.app_put = _drop
            if isinstance(queue, asyncio.Queue):
                while not queue.empty():
                    queue.get_nowait()
        await original(self, message)

    WSStream.app_send = app_send  # type: ignore[method-assign]


def _guard_close_timeouts() -> None:
    original = TCPServer._close

    async def _close(self: TCPServer) -> None:
        try:
            await original(self)
        except OSError:  # TimeoutError(ETIMEDOUT) and friends: the socket is gone
            log.debug("connection dropped by the kernel while closing")

    TCPServer._close = _close  # type: ignore[method-assign]


def _guard_write_timeouts() -> None:
    original = TCPServer.protocol_send

    async def protocol_send(self: TCPServer, event: Any) -> None:
        try:
            await original(self, event)
        except OSError:  # ETIMEDOUT from drain(); Hypercorn catches only ConnectionError
            log.debug("connection dropped by the kernel while writing")
            await self.protocol.handle(Closed())

    TCPServer.protocol_send = protocol_send  # type: ignore[method-assign]


# Fix 8: frames below the app's rate limit, per socket.
FRAME_BURST = 512
FRAME_RATE = 128.0  # a second
_BUDGET = "_npc_unseen_frames"  # (tokens, at) on the WSStream


def _unseen(event: object) -> bool:
    """A whole frame the app never gets as a message of its own: a ping, a pong, or a
    fragment that does not end its message. A frame's payload read in parts (a 16 KiB
    message arrives over a dozen TCP reads) is one frame, counted at most once."""
    if isinstance(event, Message):
        return event.frame_finished and not event.message_finished
    return isinstance(event, Ping | Pong)


def _over_budget(stream: WSStream, events: list[Any]) -> bool:
    """Take this read's unseen frames from the socket's bucket; True once it is spent
    (only while OPEN: after the close, what still comes is wsproto's to sort)."""
    unseen = sum(1 for event in events if _unseen(event))
    if not unseen:
        return False
    now = time.monotonic()
    tokens, at = getattr(stream, _BUDGET, None) or (float(FRAME_BURST), now)
    tokens = min(float(FRAME_BURST), tokens + (now - at) * FRAME_RATE) - unseen
    setattr(stream, _BUDGET, (tokens, now))
    return tokens < 0 and stream.connection.state == ConnectionState.OPEN


async def _close_flooded(stream: WSStream) -> None:
    """Fix 8's close: 4029 to the client and, as the server's own close, to the app."""
    log.info("closed a socket over %d frames the app never sees", FRAME_BURST)
    code = int(CloseCode.RATE_LIMITED)
    if stream.app_put is not None:
        await stream.app_put({"type": "websocket.disconnect", "code": code, FAILED_HERE: True})
    await stream._send_wsproto_event(CloseConnection(code=code, reason="too many frames"))
    await stream.send(StreamClosed(stream_id=stream.stream_id))


def _close_ambiguous_requests() -> None:
    original = h11._connection._keep_alive

    def _keep_alive(event: h11.Request | h11.Response) -> bool:
        if isinstance(event, h11.Request):
            names = {name for name, _ in event.headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                return False  # h11 then answers with `Connection: close` and closes
        return bool(original(event))

    h11._connection._keep_alive = _keep_alive


def _serve_http1_only() -> None:
    async def _check_protocol(self: H11Protocol, event: h11.Request) -> None:
        if event.method == b"PRI" and event.target == b"*" and event.http_version == b"2.0":
            # The HTTP/2 preface: say so in HTTP/1.1 and close (h11 then parses no more).
            headers = [*self.config.response_headers("h11"), (b"connection", b"close")]
            await self._send_h11_event(
                h11.Response(status_code=505, headers=[*headers, (b"content-length", b"0")])
            )
            await self._send_h11_event(h11.EndOfMessage())
            raise _Preface()  # no stream for it: the wrapper below closes the connection
        # An `Upgrade: h2c` is ignored: the request is served in HTTP/1.1.

    original_handle = ProtocolWrapper.handle

    async def handle(self: ProtocolWrapper, event: Any) -> None:
        try:
            return await original_handle(self, event)
        except _Preface:
            await self.send(Closed())

    H11Protocol._check_protocol = _check_protocol  # type: ignore[method-assign]
    ProtocolWrapper.handle = handle  # type: ignore[method-assign]


class _Preface(Exception):
    """The HTTP/2 preface was refused: the connection is over."""


_ORIGINAL_ACCEPT = Handshake.accept


def set_websocket_compression(enabled: bool) -> None:
    """Fix 4: let Hypercorn accept permessage-deflate, or refuse it."""
    if enabled:
        Handshake.accept = _ORIGINAL_ACCEPT  # type: ignore[method-assign]
        return

    def accept(self: Handshake, *args: Any, **kwargs: Any) -> Any:
        self.extensions = None  # as if the client had offered none
        return _ORIGINAL_ACCEPT(self, *args, **kwargs)

    Handshake.accept = accept  # type: ignore[method-assign]


class DirectWrites:
    """Fix 7: one accepted WebSocket's binary messages, written to its transport.

    Writes are synchronous and whole, so they never interleave with
    Hypercorn's own frames; they go out in the order they are made. What
    Hypercorn does on a dead or closing connection is kept: messages are
    dropped without an error (its reader reports the disconnect), and no data
    follows a close frame (wsproto's state says when one was sent or came).
    """

    __slots__ = ("_connection", "_stream", "_transport", "_writer")

    def __init__(
        self, stream: WSStream, connection: Connection, writer: asyncio.StreamWriter
    ) -> None:
        self._stream = stream
        self._connection = connection
        self._writer = writer
        self._transport = writer.transport

    @property
    def writable(self) -> bool:
        """Whether data frames may still go out (no close sent or received)."""
        return (
            not self._stream.closed
            and self._connection.state is ConnectionState.OPEN
            and not self._transport.is_closing()
        )

    def write_nowait(self, messages: Sequence[bytes]) -> bool:
        """Write `messages` as binary frames; whether some wait in the buffer (then drain)."""
        if not self.writable:
            return False
        try:
            self._transport.write(binary_frames(messages))
        except (ConnectionError, RuntimeError):
            return False  # closed under us: Hypercorn's reader reports it
        return self._transport.get_write_buffer_size() > 0

    async def drain(self) -> None:
        """Wait while the transport's buffer is over its high-water mark (a slow reader)."""
        # As in Hypercorn's protocol_send: a lost connection is its reader's to report.
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()


_reported: set[str] = set()


def direct_writes(send: Any) -> DirectWrites | None:
    """Fix 7 for the ASGI `send` of an accepted WebSocket, or None (reason logged once)."""
    found = _direct_writes(send)
    if isinstance(found, str):
        if found not in _reported:
            _reported.add(found)
            log.info("WebSocket messages go through Hypercorn's send: %s", found)
        return None
    return found


def _direct_writes(send: Any) -> DirectWrites | str:
    if not _installed:
        return "the Hypercorn fixes are not installed"
    stream = _bound_to(send, WSStream.app_send)
    if not isinstance(stream, WSStream):
        return "the ASGI send is not Hypercorn's WSStream.app_send"
    if getattr(stream, "state", None) is not ASGIWebsocketState.CONNECTED:
        return "the WebSocket is not accepted"
    connection = getattr(stream, "connection", None)
    if not isinstance(connection, Connection):
        return "the stream has no wsproto connection"
    extensions = getattr(getattr(connection, "_proto", None), "extensions", None)
    if not isinstance(extensions, list):
        return "wsproto's negotiated extensions cannot be read"
    if any(extension.enabled() for extension in extensions):
        return "an extension (permessage-deflate) was negotiated"
    return _transport_of(stream, connection)


def _transport_of(stream: WSStream, connection: Connection) -> DirectWrites | str:
    protocol = _bound_to(stream.send, H11Protocol.stream_send)
    if not isinstance(protocol, H11Protocol):
        return "the WebSocket is not on HTTP/1.1 (HTTP/2 frames its own data)"
    server = _bound_to(protocol.send, TCPServer.protocol_send)
    if not isinstance(server, TCPServer):
        return "the connection is not Hypercorn's asyncio TCPServer"
    writer = getattr(server, "writer", None)
    if not isinstance(writer, asyncio.StreamWriter) or writer.transport is None:
        return "the TCPServer has no asyncio StreamWriter"
    return DirectWrites(stream, connection, writer)


def _bound_to(method: Any, function: Any) -> object:
    """The object `method` is `function` bound to, or None."""
    if getattr(method, "__func__", None) is not function:
        return None
    return getattr(method, "__self__", None)
