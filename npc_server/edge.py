"""The socket edge: one WebSocket, its reader, writer and timers.

Quart copies inbound messages into an unbounded queue and Hypercorn's sends
block forever on a peer that stopped reading (HYPERCORN-NOTES.md), so `/ws`
is served by this ASGI handler, installed as Quart's websocket class: the
reader pulls from Hypercorn's bounded queue at its own pace, only the writer
awaits `send`, and every write has a timeout. All closes go through
`request_close`; the first code wins and `run` performs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from npc_server.handlers import handle_request
from npc_server.node import Node
from npc_server.protocol.codec import encode_server_frame
from npc_server.protocol.codes import CloseCode, ErrorCode
from npc_server.protocol.connection import (
    CloseConnection,
    FrameReceived,
    SendError,
    ServerConnection,
)
from npc_server.protocol.frames import (
    Ack,
    Error,
    Hello,
    Ping,
    Pong,
    Refresh,
    ServerFrame,
    ServerPing,
    ServerPong,
    Welcome,
)
from npc_server.session import Session
from npc_server.tokens import TokenClaims, TokenError, verify_token

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 1.0
FLUSH_BUDGET = 1.0
# Closes after which frames still queued are written first (errors explain them).
FLUSH_BEFORE = {CloseCode.PROTOCOL_VIOLATION, CloseCode.TOKEN_EXPIRED, CloseCode.GOING_AWAY}

Receive = Any
Send = Any


class PeerGone(Exception):
    """The client's side of the connection is closed."""

    def __init__(self, code: int | None) -> None:
        super().__init__(code)
        self.code = code


class SocketEdge:
    """Serves one accepted WebSocket until it closes."""

    def __init__(self, node: Node, receive: Receive, send: Send, secret: str) -> None:
        self.node = node
        self._receive = receive
        self._send = send
        self._secret = secret
        limits = node.config.limits
        self.write_timeout = limits.write_timeout
        self.conn = ServerConnection(limits.protocol_limits(), node.clock)
        self.session: Session | None = None
        self.close_code: CloseCode | None = None
        self.close_reason = ""
        self.peer_code: int | None = None
        self._closing = asyncio.Event()
        self.finished = asyncio.Event()
        self._ready = asyncio.Event()
        self._ping_sent_at: float | None = None
        self._last_ping = node.clock()
        self._write_started: float | None = None
        self._expires_at = 0.0
        self._expiry: asyncio.TimerHandle | None = None

    # --- closing ----------------------------------------------------------

    def request_close(self, code: CloseCode | None, reason: str = "") -> None:
        """Ask for the socket to close with `code` (None: the peer is gone)."""
        if self._closing.is_set():
            return
        self.close_code = code
        self.close_reason = reason
        self._closing.set()

    async def _send_close(self, code: CloseCode, reason: str) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._send(
                    {"type": "websocket.close", "code": int(code), "reason": reason[:120]}
                )

    # --- I/O --------------------------------------------------------------

    async def _recv(self) -> bytes | str:
        event = await self._receive()
        kind = event["type"]
        if kind == "websocket.receive":
            data = event.get("bytes")
            return data if data is not None else (event.get("text") or "")
        if kind == "websocket.disconnect":
            raise PeerGone(event.get("code"))
        return b""

    async def _write(self, data: bytes) -> None:
        async with asyncio.timeout(self.write_timeout):
            await self._send({"type": "websocket.send", "bytes": data})

    async def _write_frame(self, frame: ServerFrame) -> None:
        await self._write(encode_server_frame(frame, None))

    # --- lifecycle --------------------------------------------------------

    async def run(self) -> None:
        """Authenticate, attach a session and serve it until the socket closes."""
        self.node.sockets.add(self)
        try:
            hello = await self._await_hello()
            if hello is not None:
                await self._serve(hello)
        except (PeerGone, TimeoutError):
            pass  # the peer left, or stopped reading during the handshake
        finally:
            self.node.sockets.discard(self)
            self.finished.set()
            if self._expiry is not None:
                self._expiry.cancel()

    async def _await_hello(self) -> Hello | None:
        try:
            async with asyncio.timeout(self.node.config.auth.auth_timeout):
                data = await self._recv()
        except TimeoutError:
            await self._send_close(CloseCode.AUTH_FAILED, "no hello in time")
            return None
        for event in self.conn.receive(data):
            if isinstance(event, CloseConnection):
                await self._send_close(event.code, event.reason)
                return None
            if isinstance(event, FrameReceived) and isinstance(event.frame, Hello):
                return event.frame
        return None

    async def _serve(self, hello: Hello) -> None:
        try:
            claims = verify_token(self._secret, hello.token)
        except TokenError as exc:
            code = CloseCode.TOKEN_EXPIRED if exc.expired else CloseCode.AUTH_FAILED
            await self._send_close(code, exc.message)
            return
        if not self.node.player_connects.allow_nowait(claims.player):
            await self._send_close(CloseCode.RATE_LIMITED, "too many connects for this player")
            return
        refused = self._socket_cap(claims.player)
        if refused is not None:
            await self._send_close(refused, "too many connections for this player")
            return
        session, replay = self._open_session(claims.player, hello)
        self.conn.accept_hello()
        self.session = session
        session.attach(self, self._ready.set, self.request_close)
        self._schedule_expiry(claims)
        try:
            await self._start(session, replay, hello)
            await self._live(session)
        finally:
            resumable = self.close_code is None and self.peer_code != CloseCode.NORMAL
            resumable = resumable or (
                self.close_code is not None and self.close_code.should_reconnect
            )
            self.node.detach_session(session, self, resumable)

    def _socket_cap(self, player: str) -> CloseCode | None:
        limits = self.node.config.limits
        attached = self.node.attached_sessions(player)
        if len(attached) < limits.max_sockets_per_player:
            return None
        if limits.sockets_policy == "replace":
            attached[0].on_close(CloseCode.REPLACED)
            return None
        return CloseCode.TOO_MANY_CONNECTIONS

    def _open_session(self, player: str, hello: Hello) -> tuple[Session, list[bytes] | None]:
        if hello.resume is not None:
            session = self.node.find_resumable(player, hello.resume.session)
            if session is not None:
                replay = session.replay_after(hello.resume.seq)
                if replay is not None:
                    return session, replay
                self.node.end_session(session)
        return self.node.open_session(player), None

    async def _start(self, session: Session, replay: list[bytes] | None, hello: Hello) -> None:
        limits = self.node.config.limits
        welcome = Welcome(
            session=session.id,
            player=session.player,
            resumed=replay is not None,
            seq=session.last_seq,
            heartbeat=limits.heartbeat,
            limits=self.conn.limits.to_wire(),
            server=self.node.server_info(),
        )
        await self._write_frame(welcome)
        for data in replay or ():
            await self._write(data)
        if replay is None:
            self.node.snapshot(session)

    async def _live(self, session: Session) -> None:
        tasks = [
            asyncio.create_task(self._reader(session), name="ws-reader"),
            asyncio.create_task(self._writer(session), name="ws-writer"),
        ]
        try:
            await self._closing.wait()
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
                while (data := session.next_write_nowait()) is not None:
                    await self._send({"type": "websocket.send", "bytes": data})

    # --- tasks ------------------------------------------------------------

    async def _reader(self, session: Session) -> None:
        try:
            while True:
                data = await self._recv()
                for event in self.conn.receive(data):
                    self._dispatch(session, event)
        except PeerGone as exc:
            self.peer_code = exc.code
            self.request_close(None)
        except Exception:
            # A bug must cost this socket only, never silently stop its reader.
            log.exception("internal error while handling a frame of %s", session.player)
            self.request_close(CloseCode.INTERNAL_ERROR, "internal error")

    def _dispatch(
        self, session: Session, event: FrameReceived | SendError | CloseConnection
    ) -> None:
        if isinstance(event, SendError):
            session.push_nowait(event.frame)
        elif isinstance(event, CloseConnection):
            self.request_close(event.code, event.reason)
        else:
            self._handle(session, event.frame)

    def _handle(self, session: Session, frame: Any) -> None:
        if isinstance(frame, Ping):
            session.push_nowait(ServerPong(ts=frame.ts, id=frame.id))
        elif isinstance(frame, Pong):
            self._ping_sent_at = None
        elif isinstance(frame, Refresh):
            self._refresh(session, frame)
        else:
            handle_request(self.node, session, frame)

    def _refresh(self, session: Session, frame: Refresh) -> None:
        try:
            claims = verify_token(self._secret, frame.token)
        except TokenError as exc:
            session.push_nowait(Error(code=ErrorCode.BAD_TOKEN, message=exc.message, id=frame.id))
            return
        if claims.player != session.player:
            message = "the new token is for another player"
            session.push_nowait(Error(code=ErrorCode.FORBIDDEN, message=message, id=frame.id))
            return
        self._schedule_expiry(claims)
        session.push_nowait(Ack(frame.id))

    def _schedule_expiry(self, claims: TokenClaims) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        delay = claims.expires_at + self.node.config.auth.expiry_grace - time.time()
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(
            max(0.0, delay), self.request_close, CloseCode.TOKEN_EXPIRED, "token expired"
        )

    async def _writer(self, session: Session) -> None:
        # No timer per write (5 us each, a quarter of a frame's cost): `tick`
        # closes the socket when one write has been pending over write_timeout.
        send = self._send
        try:
            while session.owner is self:
                data = session.next_write_nowait()
                if data is None:
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                self._write_started = self.node.clock()
                await send({"type": "websocket.send", "bytes": data})
                self._write_started = None
        except asyncio.CancelledError:
            raise
        except Exception:
            self.request_close(None)

    def tick(self, now: float) -> None:
        """Called by the node's watchdog: write stalls and the heartbeat."""
        started = self._write_started
        if started is not None and now - started > self.write_timeout:
            self.request_close(
                CloseCode.SLOW_CONSUMER, f"a write took over {self.write_timeout:g} s"
            )
            return
        session = self.session
        if session is None or self._closing.is_set():
            return
        interval = self.node.config.limits.heartbeat
        if self._ping_sent_at is not None:
            if now - self._ping_sent_at >= interval:
                self.request_close(CloseCode.HEARTBEAT_TIMEOUT, f"no pong within {interval:g} s")
        elif now - self._last_ping >= interval:
            self._ping_sent_at = self._last_ping = now
            session.push_nowait(ServerPing(ts=int(time.time() * 1000)))


class NpcWebsocketConnection:
    """Quart's `asgi_websocket_class`: serves `/ws` with a `SocketEdge`."""

    def __init__(self, app: Any, scope: dict[str, Any]) -> None:
        self.app = app
        self.scope = scope

    async def __call__(self, receive: Receive, send: Send) -> None:
        event = await receive()
        if event["type"] != "websocket.connect":
            return
        node: Node = self.app.extensions["npc_server.node"]
        if self.scope.get("path") != "/ws" or node.draining:
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        address = (self.scope.get("client") or ("unknown",))[0]
        if not node.address_connects.allow_nowait(str(address)):
            code = int(CloseCode.RATE_LIMITED)
            await send({"type": "websocket.close", "code": code, "reason": "too many connects"})
            return
        secret: str = self.app.extensions["npc_server.secret"]
        await SocketEdge(node, receive, send, secret).run()
