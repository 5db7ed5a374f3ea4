"""The WebSocket transport: `/ws` as an ASGI handler, its reader and writer.

Quart copies inbound messages into an unbounded queue and Hypercorn's sends
block forever on a peer that stopped reading (HYPERCORN-NOTES.md), so `/ws`
is served by this handler, installed as Quart's websocket class: the reader
pulls from Hypercorn's bounded queue at its own pace, only the writer awaits
`send`, and the node's watchdog closes a socket whose write stalls. All that
is not I/O lives in `ClientLink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from npc_server.events import Connected, Limited
from npc_server.handlers import handle_request
from npc_server.hypercorn_fixes import FAILED_HERE, DirectWrites, direct_writes
from npc_server.node import Node
from npc_server.protocol.codec import encode_server_frame
from npc_server.protocol.codes import CloseCode, ErrorCode
from npc_server.protocol.connection import (
    CloseConnection,
    FrameReceived,
    SendError,
    ServerConnection,
)
from npc_server.protocol.frames import Hello, Ping, Pong, Refresh, ServerPong
from npc_server.session import Session
from npc_server.transports.base import ClientLink, Refusal
from npc_server.transports.direct import DirectFlush, ReadySignal, Wake

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 1.0
FLUSH_BUDGET = 1.0
# Closes after which frames still queued are written first (errors explain them).
FLUSH_BEFORE = {CloseCode.PROTOCOL_VIOLATION, CloseCode.TOKEN_EXPIRED, CloseCode.GOING_AWAY}

Receive = Any
Send = Any


class PeerGone(Exception):
    """The client's side of the connection is closed."""

    def __init__(self, code: int | None, failed_here: bool = False) -> None:
        super().__init__(code)
        self.code = code
        # The WebSocket layer failed the connection (a message over frame_bytes: 1009)
        # and sent `code` itself: the server's close, not the client's.
        self.failed_here = failed_here


class WebSocketEdge(ClientLink):
    """Serves one accepted WebSocket until it closes."""

    def __init__(self, node: Node, receive: Receive, send: Send, secret: str, address: str) -> None:
        conn = ServerConnection(node.config.limits.protocol_limits(), node.clock)
        super().__init__(
            node, secret, transport="websocket", address=address, on_ping_sent=conn.ping_sent_nowait
        )
        self._receive = receive
        self._send = send
        self.conn = conn
        self.ready: ReadySignal = ReadySignal()
        # "direct" once the writer frames its own messages (hypercorn_fixes fix 7).
        self.write_path = "hypercorn"

    # --- I/O --------------------------------------------------------------

    async def _send_close(self, code: CloseCode, reason: str) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._send(
                    {"type": "websocket.close", "code": int(code), "reason": reason[:120]}
                )

    async def _recv(self) -> bytes | str:
        event = await self._receive()
        kind = event["type"]
        if kind == "websocket.receive":
            data = event.get("bytes")
            return data if data is not None else (event.get("text") or "")
        if kind == "websocket.disconnect":
            raise PeerGone(event.get("code"), bool(event.get(FAILED_HERE)))
        return b""

    async def _write(self, data: bytes) -> None:
        async with asyncio.timeout(self.write_timeout):
            await self._send({"type": "websocket.send", "bytes": data})

    # --- lifecycle --------------------------------------------------------

    async def run(self) -> None:
        """Authenticate, attach a session and serve it until the socket closes."""
        try:
            hello = await self._await_hello()
            if hello is not None:
                await self._serve(hello)
        except PeerGone as exc:
            self._gone(exc)  # before its hello
        except TimeoutError:
            pass  # the peer stopped reading during the handshake
        finally:
            self.release()

    def _gone(self, exc: PeerGone) -> None:
        if exc.failed_here:
            self.failed_code = exc.code
        else:
            self.peer_code = exc.code

    async def _await_hello(self) -> Hello | None:
        try:
            async with asyncio.timeout(self.node.config.auth.auth_timeout):
                data = await self._recv()
        except TimeoutError:
            self.request_close(CloseCode.AUTH_FAILED, "no hello in time")
            await self._send_close(CloseCode.AUTH_FAILED, "no hello in time")
            return None
        for event in self.conn.receive(data):
            if isinstance(event, CloseConnection):
                self.request_close(event.code, event.reason)
                await self._send_close(event.code, event.reason)
                return None
            if isinstance(event, FrameReceived) and isinstance(event.frame, Hello):
                return event.frame
        return None

    async def _serve(self, hello: Hello) -> None:
        try:
            claims = self.admit(hello.token)
            replay = await self.attach_async(claims, hello.resume)
        except Refusal as refusal:
            await self._send_close(refusal.code, refusal.reason)
            return
        self.conn.accept_hello()
        session = self.session
        assert session is not None
        delta_ms = self.conn.limits.grant_delta_ms(hello.delta_ms)
        session.pace(delta_ms)
        limits = {**self.conn.limits.to_wire(), "delta_ms": delta_ms}
        welcome = self.welcome(limits, resumed=replay is not None)
        await self._write(encode_server_frame(welcome, None))
        for data in replay or ():
            await self._write(data)
        self.catch_up(replay)
        await self._live(session)

    async def _live(self, session: Session) -> None:
        tasks = [
            asyncio.create_task(self._reader(session), name="ws-reader"),
            asyncio.create_task(self._writer(session), name="ws-writer"),
        ]
        try:
            await self.closing.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.close_code is None:
            return
        if self.close_code in FLUSH_BEFORE and session.owner is self:
            await self._flush(session)
        await self._send_close(self.close_code, self.close_reason)

    async def _flush(self, session: Session) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(FLUSH_BUDGET):
                for data in session.take_writes_nowait(self.node.clock(), hold=False):
                    await self._send({"type": "websocket.send", "bytes": data})

    # --- tasks ------------------------------------------------------------

    async def _reader(self, session: Session) -> None:
        try:
            while True:
                data = await self._recv()
                for event in self.conn.receive(data):
                    self._dispatch(session, event)
        except PeerGone as exc:
            self._gone(exc)
            self.request_close(None)
        except Exception:
            # A bug must cost this socket only, never silently stop its reader.
            log.exception("internal error while handling a frame of %s", session.player)
            self.request_close(CloseCode.INTERNAL_ERROR, "internal error")

    def _dispatch(
        self, session: Session, event: FrameReceived | SendError | CloseConnection
    ) -> None:
        if isinstance(event, SendError):
            if event.frame.code is ErrorCode.RATE_LIMITED:
                self.node.events.emit(Limited("frames", session.player))
            self.send_nowait(event.frame)
        elif isinstance(event, CloseConnection):
            self.request_close(event.code, event.reason)
        else:
            self._handle(session, event)

    def _handle(self, session: Session, event: FrameReceived) -> None:
        frame = event.frame
        if isinstance(frame, Ping):
            self.send_nowait(ServerPong(ts=frame.ts, id=frame.id))
        elif isinstance(frame, Pong):
            if event.answers_ping:
                self.pong_received()
        elif isinstance(frame, Refresh):
            self.refresh(frame)
        else:
            handle_request(self.node, session, frame)

    async def _writer(self, session: Session) -> None:
        # No timer per write (5 us each, a quarter of a frame's cost): `tick`
        # closes the socket when one batch has been pending over write_timeout.
        # One wake-up writes everything its socket may get now; a pacing window
        # adds one timer per socket at most (`Wake`), never one per frame.
        wake = Wake(self.ready)
        try:
            await self._write_loop(session, wake)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.request_close(None)
            return
        finally:
            wake.cancel()
        # The session was taken over or ended: this socket must not stay open and silent.
        self.request_close(CloseCode.GOING_AWAY, "the session ended")

    async def _write_loop(self, session: Session, wake: Wake) -> None:
        direct = direct_writes(self._send)
        if direct is not None:
            self.write_path = "direct"
            await self._write_direct(session, wake, direct)
            return
        send = self._send
        clock = self.node.clock
        ready = self.ready
        while session.owner is self:
            batch = session.take_writes_nowait(clock())
            if batch:
                self.write_started()
                for data in batch:
                    await send({"type": "websocket.send", "bytes": data})
                self.write_finished()
                continue
            ready.clear()
            if session.held_until is not None:
                wake.at(session.held_until, clock())
            await ready.wait()

    async def _write_direct(self, session: Session, wake: Wake, direct: DirectWrites) -> None:
        # Fix 7 of hypercorn_fixes; see transports/direct.py. This task only
        # waits out drains, each timed by `tick` as a pending write.
        flush = DirectFlush(self, session, wake, direct)
        self.ready.direct = flush
        try:
            flush.flush_nowait()  # what was queued before the writer started
            while session.owner is self:
                await flush.drain_wanted.wait()
                flush.drain_wanted.clear()
                if flush.draining:
                    self.write_started()
                    await direct.drain()
                    self.write_finished()
                    flush.draining = False
                    flush.flush_nowait()
        finally:
            self.ready.direct = None


class NpcWebsocketConnection:
    """Quart's `asgi_websocket_class`: serves `/ws` with a `WebSocketEdge`."""

    def __init__(self, app: Any, scope: dict[str, Any]) -> None:
        self.app = app
        self.scope = scope

    async def __call__(self, receive: Receive, send: Send) -> None:
        event = await receive()
        if event["type"] != "websocket.connect":
            return
        node: Node = self.app.extensions["npc_server.node"]
        if self.scope.get("path") != "/ws":
            # Before accept, Hypercorn answers the handshake with HTTP 403.
            await send({"type": "websocket.close", "code": int(CloseCode.POLICY_VIOLATION)})
            return
        await send({"type": "websocket.accept"})
        if node.draining:  # accepted, so the client sees 1001: go elsewhere and resume
            reason = "server draining"
            await send(
                {"type": "websocket.close", "code": int(CloseCode.GOING_AWAY), "reason": reason}
            )
            return
        address = str((self.scope.get("client") or ("unknown",))[0])
        if not node.address_connects.allow_nowait(address):  # a limit hit, no connection
            node.events.emit(Limited("connects_address", None))
            code = int(CloseCode.RATE_LIMITED)
            await send({"type": "websocket.close", "code": code, "reason": "too many connects"})
            return
        node.events.emit(Connected("websocket", address))  # paired with its Closed
        secret: str = self.app.extensions["npc_server.secret"]
        await WebSocketEdge(node, receive, send, secret, address).run()
