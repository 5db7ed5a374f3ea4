"""What every transport does for one client, apart from moving bytes.

A `ClientLink` checks the token, the connect rate and the socket cap, opens
or resumes the session, builds the welcome and the replay, watches token
expiry, the heartbeat and write stalls, and chooses the close code. A
transport (WebSocket, SSE) owns the I/O: it writes what the session hands
out, and closes with `close_code` once `closing` is set. Every close goes
through `request_close`; the first code wins.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from npc_server.bans import refusal_reason
from npc_server.cluster.handover import Kicked
from npc_server.cluster.sockets import Claim
from npc_server.events import AuthFailed, Closed, Limited, SessionAttached
from npc_server.node import Node
from npc_server.protocol.codes import DEFAULT_REASONS, CloseCode, ErrorCode
from npc_server.protocol.frames import Ack, Error, Refresh, Resume, ServerFrame, ServerPing, Welcome
from npc_server.session import Session, SessionState
from npc_server.tokens import TokenClaims, TokenError, verify_token

SUBSCRIBE_TIMEOUT = 2.0  # seconds a welcome waits for the session's subscriptions


class Refusal(Exception):
    """The client is turned away before it has a session: close with `code`."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def close_code_for(error: TokenError) -> CloseCode:
    """The close code for a token that does not admit the client (one place)."""
    return CloseCode.TOKEN_EXPIRED if error.expired else CloseCode.AUTH_FAILED


def _no_ping_hook() -> None:
    return None


class ClientLink:
    """The transport-independent state of one connected client."""

    def __init__(
        self,
        node: Node,
        secret: str,
        *,
        transport: str,
        address: str,
        heartbeat: bool = True,
        on_ping_sent: Callable[[], None] = _no_ping_hook,
    ) -> None:
        self.node = node
        self.transport = transport
        self.address = address
        self._secret = secret
        self._heartbeat = heartbeat
        self._on_ping_sent = on_ping_sent
        self.write_timeout = node.config.limits.write_timeout
        self.session: Session | None = None
        self.close_code: CloseCode | None = None
        self.close_reason = ""
        self.peer_code: int | None = None
        # A close the transport's protocol layer made for a fault of the client's bytes
        # (WebSocket 1009, 1002, 1007): reported as the server's close, resumable as before.
        self.failed_code: int | None = None
        self.closing = asyncio.Event()
        self.finished = asyncio.Event()
        self.ready = asyncio.Event()
        self._ping_sent_at: float | None = None
        self._last_ping = node.clock()
        self._write_started: float | None = None
        self._expiry: asyncio.TimerHandle | None = None
        node.sockets.add(self)

    # --- closing ----------------------------------------------------------

    def request_close(self, code: CloseCode | None, reason: str = "") -> None:
        """Ask for the client to be closed with `code` (None: the peer is gone)."""
        if self.closing.is_set():
            return
        self.close_code = code
        self.close_reason = reason or (DEFAULT_REASONS.get(code, "") if code is not None else "")
        self.closing.set()

    @property
    def resumable(self) -> bool:
        """Whether the session should wait for a resume after this close."""
        if self.close_code is None:
            return self.peer_code != CloseCode.NORMAL
        return self.close_code.should_reconnect

    def release(self) -> None:
        """The transport is done: detach or end the session, forget this client."""
        session = self.session
        if session is not None:
            if session.owner is self:
                self.node.socket_claims.release_nowait(session.player, session.id)
            self.node.detach_session(session, self, self.resumable)
        self.node.sockets.discard(self)
        self.node.events.emit(
            Closed(
                self.transport,
                self.address,
                None if session is None else session.player,
                None if session is None else session.id,
                self.failed_code if self.close_code is None else int(self.close_code),
                self.peer_code,
                self.close_reason,
            )
        )
        if self._expiry is not None:
            self._expiry.cancel()
        self.finished.set()

    # --- admission --------------------------------------------------------

    def admit(self, token: str) -> TokenClaims:
        """Check the token and the player's connect rate; raise `Refusal` (a ban and the
        socket cap are checked in `attach_async`, the cap once the session is known)."""
        try:
            claims = verify_token(self._secret, token)
        except TokenError as exc:
            code = close_code_for(exc)
            self.node.events.emit(AuthFailed(self.transport, self.address, code, exc.message))
            self.request_close(code, exc.message)
            raise Refusal(code, exc.message) from None
        if not self.node.player_connects.allow_nowait(claims.player):
            self.node.events.emit(Limited("connects_player", claims.player))
            self._refuse(CloseCode.RATE_LIMITED, "too many connects for this player")
        return claims

    def _refuse(self, code: CloseCode, reason: str) -> None:
        self.request_close(code, reason)
        raise Refusal(code, reason)

    def _socket_cap(self, session: Session) -> None:
        """The player's socket cap on this node. A resume that takes `session` over from
        the socket holding it adds no socket: that one is not counted (it gets 4503)."""
        limits = self.node.config.limits
        attached = [s for s in self.node.attached_sessions(session.player) if s is not session]
        if len(attached) < limits.max_sockets_per_player:
            return
        if limits.sockets_policy != "replace":
            self._refuse(CloseCode.TOO_MANY_CONNECTIONS, "too many connections for this player")
        attached[0].on_close(CloseCode.REPLACED)

    async def attach_async(self, claims: TokenClaims, resume: Resume | None) -> list[bytes] | None:
        """Open or resume the session; the frames to replay, or None for a new session.
        Raises `Refusal` for a ban or over the socket cap. In a cluster a session another
        node holds is handed over here (`cluster/handover.py`), and the ban and the cap
        are the cluster's (Redis's word; this node's own while Redis is away)."""
        banned = await self.node.bans.remaining_shared(claims.player)
        if banned:
            self._refuse(CloseCode.KICKED, refusal_reason(banned))
        handed = None
        if resume is not None and self.node.find_resumable(claims.player, resume.session) is None:
            try:
                handed = await self.node.handover.resume(claims.player, resume)
            except Kicked:
                self._refuse(CloseCode.KICKED, "kicked")
        session, replay = handed or self._open_session(claims.player, resume)
        sockets = self.node.socket_claims  # the cluster's count; one process: this node's
        claim = await sockets.claim(session.player, session.id) if sockets.enabled else Claim.LOCAL
        self._cap(session, replay, claim)
        await self._subscriptions_live()
        return self._attached(claims, resume, session, replay)

    async def _subscriptions_live(self) -> None:
        # The welcome waits until the broker delivers the session's channels (in a
        # cluster: Redis applied their subscriptions, and other nodes were told): what any
        # node publishes for the player after the welcome reaches this socket. Redis away
        # or slow: the session is served from this node meanwhile, as before.
        done = asyncio.get_running_loop().create_future()

        def settle() -> None:
            if not done.done():
                done.set_result(None)

        self.node.broker.when_subscribed(settle, settle)
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                await done
        except TimeoutError:
            pass

    def _cap(self, session: Session, replay: list[bytes] | None, claim: Claim) -> None:
        """The socket cap for the session the hello got: the cluster's answer (`claim`), or
        this node's count (LOCAL: one process, or Redis away). If it refuses, a session
        opened for this hello alone ends (a resumed one waits for its window)."""
        try:
            if claim is Claim.LOCAL:
                self._socket_cap(session)
            elif claim is Claim.REFUSED:
                self._refuse(CloseCode.TOO_MANY_CONNECTIONS, "too many connections for this player")
        except Refusal:
            if replay is None and session.owner is None:
                self.node.end_session(session)  # new, never attached; a resumed one waits
            raise

    def _attached(
        self,
        claims: TokenClaims,
        resume: Resume | None,
        session: Session,
        replay: list[bytes] | None,
    ) -> list[bytes] | None:
        if session.state is SessionState.EXPIRED:
            # Ended while the hello waited (a kick, in a cluster up to SUBSCRIBE_TIMEOUT):
            # attaching it would welcome a socket on a session no node routes to.
            self._refuse(session.ended_with, "the session ended before it was opened")
        self.session = session
        session.attach(self, self.ready.set, self.request_close)
        self.schedule_expiry(claims)
        outcome = "new" if resume is None else "resumed" if replay is not None else "snapshot"
        attached = SessionAttached(self.transport, session.player, session.id, outcome)
        self.node.events.emit(attached)
        return replay

    def _open_session(
        self, player: str, resume: Resume | None
    ) -> tuple[Session, list[bytes] | None]:
        if resume is not None:
            session = self.node.find_resumable(player, resume.session)
            if session is not None:
                replay = session.replay_after(resume.seq)
                if replay is not None:
                    self.node.hold_for_resume(session)
                    return session, replay
                if session.owner is None:
                    self.node.end_session(session)
                # A refused resume never harms a socket that holds the session.
        return self.node.open_session(player), None

    def welcome(self, limits: Mapping[str, int], resumed: bool) -> Welcome:
        session = self._session()
        return Welcome(
            session=session.id,
            player=session.player,
            resumed=resumed,
            seq=session.last_seq,
            heartbeat=self.node.config.limits.heartbeat,
            limits=limits,
            server=self.node.server_info(),
        )

    def catch_up(self, replay: list[bytes] | None) -> None:
        """After the welcome and replay: a new session gets a snapshot of turns under way."""
        if replay is None:
            self.node.snapshot(self._session())

    def _session(self) -> Session:
        if self.session is None:
            raise RuntimeError("the client has no session yet")
        return self.session

    # --- requests every transport answers ---------------------------------

    def send_nowait(self, frame: ServerFrame) -> None:
        """Queue a frame for this client's own session."""
        self.node.hub.send_to_session(self._session(), frame)

    def refresh(self, frame: Refresh) -> None:
        """A new token for the same player moves the expiry; anything else is an error."""
        try:
            claims = verify_token(self._secret, frame.token)
        except TokenError as exc:
            self.send_nowait(Error(code=ErrorCode.BAD_TOKEN, message=exc.message, id=frame.id))
            return
        if claims.player != self._session().player:
            message = "the new token is for another player"
            self.send_nowait(Error(code=ErrorCode.FORBIDDEN, message=message, id=frame.id))
            return
        self.schedule_expiry(claims)
        self.send_nowait(Ack(frame.id))

    def schedule_expiry(self, claims: TokenClaims) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        delay = claims.expires_at + self.node.config.auth.expiry_grace - time.time()
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(
            max(0.0, delay), self.request_close, CloseCode.TOKEN_EXPIRED, "token expired"
        )

    # --- timers -----------------------------------------------------------

    def pong_received(self) -> None:
        self._ping_sent_at = None

    def write_started(self) -> None:
        self._write_started = self.node.clock()

    def write_finished(self) -> None:
        self._write_started = None

    def tick(self, now: float) -> None:
        """Called by the node's watchdog: write stalls and the heartbeat."""
        started = self._write_started
        if started is not None and now - started > self.write_timeout:
            self.request_close(
                CloseCode.SLOW_CONSUMER, f"a write took over {self.write_timeout:g} s"
            )
            return
        if self.session is None or self.closing.is_set() or not self._heartbeat:
            return
        interval = self.node.config.limits.heartbeat
        if self._ping_sent_at is not None:
            if now - self._ping_sent_at >= interval:
                self.request_close(CloseCode.HEARTBEAT_TIMEOUT, f"no pong within {interval:g} s")
        elif now - self._last_ping >= interval:
            self._ping_sent_at = self._last_ping = now
            self.send_nowait(ServerPing(ts=int(time.time() * 1000)))
            self._on_ping_sent()
