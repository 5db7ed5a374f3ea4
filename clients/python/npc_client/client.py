"""The asyncio client: one protocol v1 session that outlives its WebSockets.

`NpcClient` holds the protocol state (through `FrameRouter`) and the public
API; `Connection` keeps a socket open and resumes the session after a drop,
so turns go on streaming into the same `Turn` handles. After every reconnect
a `ping` fences the server's backlog: once its `pong` is in, requests the
server never received are resent (resumed session) or failed (new session),
and turns missing from a new session's snapshot end.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import msgpack

from npc_client.connection import (
    Backoff,
    Callbacks,
    Connection,
    ConnectionState,
    RateBudget,
)
from npc_client.errors import (
    ConnectionClosedError,
    NpcClientError,
    ProtocolError,
    RequestLost,
    UnknownTurn,
)
from npc_client.events import Event, Inbox
from npc_client.router import Frame, FrameRouter, Pending
from npc_client.turns import Turn

log = logging.getLogger(__name__)

VERSION = "0.1.0"
SEEN_INTERVAL = 0.25
FENCE_TIMEOUT = 10.0
DEFAULT_BACKOFF = Backoff()

TokenProvider = Callable[[], str | Awaitable[str]]


@dataclass(frozen=True, slots=True)
class ServerInfo:
    name: str
    version: str
    node: str


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    connects: int
    resumed: int
    new_sessions: int
    reconnect_attempts: int
    frames: int
    duplicates: int
    pings_answered: int
    seen_sent: int


async def connect(
    url: str,
    token: str,
    *,
    reconnect: bool = True,
    client_name: str = f"npc-client-python/{VERSION}",
    token_provider: TokenProvider | None = None,
    on_turn: Callable[[Turn], None] | None = None,
    on_event: Callable[[Event], None] | None = None,
    on_state: Callable[[ConnectionState], None] | None = None,
    backoff: Backoff = DEFAULT_BACKOFF,
    request_timeout: float | None = 10.0,
    open_timeout: float = 10.0,
) -> NpcClient:
    """Open a session: connect, send `hello` and wait for `welcome`.

    Raises `ServerUnreachable` if no WebSocket opens and `ConnectionClosedError`
    if the server refuses (e.g. code 4500 for a bad token); the first
    connection is never retried. The options are described in the README.
    """
    client = NpcClient(
        url,
        token,
        reconnect=reconnect,
        client_name=client_name,
        token_provider=token_provider,
        on_turn=on_turn,
        on_event=on_event,
        on_state=on_state,
        backoff=backoff,
        request_timeout=request_timeout,
        open_timeout=open_timeout,
    )
    await client._start()
    return client


class NpcClient:
    """A connected player. Create it with `await connect(...)`."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        reconnect: bool = True,
        client_name: str = f"npc-client-python/{VERSION}",
        token_provider: TokenProvider | None = None,
        on_turn: Callable[[Turn], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
        on_state: Callable[[ConnectionState], None] | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        request_timeout: float | None = 10.0,
        open_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.session: str | None = None
        self.player: str | None = None
        self.server: ServerInfo | None = None
        self.limits: dict[str, int] = {}
        self.heartbeat: float | None = None
        self.latency: float | None = None
        self._token = token
        self._token_provider = token_provider
        self._on_turn = on_turn
        self._on_event = on_event
        self._request_timeout = request_timeout
        self._router = FrameRouter(self._new_turn, self.act, self._foreign_turn, self._event)
        callbacks = Callbacks(
            self._hello, self._welcomed, self._router.receive, self._finish, on_state
        )
        self._conn = Connection(
            url,
            callbacks,
            client_name=client_name,
            reconnect=reconnect,
            renew_token=token_provider is not None,
            backoff=backoff,
            open_timeout=open_timeout,
        )
        self._turn_inbox: Inbox[Turn] = Inbox()
        self._event_inbox: Inbox[Event] = Inbox()
        self._budget = RateBudget(20.0, 40)
        self._closed = asyncio.Event()
        self._closing = False
        self._error: ConnectionClosedError | None = None
        self._seen_dirty: dict[str, Turn] = {}
        self._seen_wanted = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._counts = {"resumed": 0, "new_sessions": 0, "seen_sent": 0}

    @property
    def state(self) -> ConnectionState:
        return self._conn.state

    async def __aenter__(self) -> NpcClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- requests ---------------------------------------------------------

    async def say(self, npc: str, text: str, room: str | None = None) -> Turn:
        """Speak to an NPC; returns the turn's handle once the server acks."""
        frame: Frame = {"t": "say", "npc": npc, "text": text}
        if room is not None:
            frame["room"] = room
        pending = await self._exchange(frame)
        if pending.turn is None:
            raise ProtocolError(f"ack for say without a turn id: {pending.future.result()!r}")
        return pending.turn

    async def interrupt(self, turn: Turn | None = None, shown: int | None = None) -> None:
        """Stop `turn`, by default the newest turn not yet ended."""
        turn = turn or self._router.newest_open_turn()
        if turn is not None:
            await turn.interrupt(shown)
        else:
            await self._request({"t": "interrupt"})

    async def act(self, action_id: str, accept: bool) -> None:
        """Answer an action that asked for approval."""
        await self._request({"t": "act", "action": action_id, "accept": accept})

    async def join(self, room: str) -> None:
        await self._request({"t": "join", "room": room})

    async def leave(self, room: str) -> None:
        await self._request({"t": "leave", "room": room})

    async def context(self, data: dict[str, Any], npc: str | None = None) -> None:
        """Set game state for the NPC's next turns (all NPCs when `npc` is None)."""
        frame: Frame = {"t": "context", "data": data}
        if npc is not None:
            frame["npc"] = npc
        await self._request(frame)

    async def typing(self, on: bool, room: str | None = None, npc: str | None = None) -> bool:
        """Tell the room you are typing; False if skipped to stay under the rate limit."""
        if not self._budget.take_optional_nowait():
            return False
        frame: Frame = {"t": "typing", "on": on}
        frame.update({k: v for k, v in (("room", room), ("npc", npc)) if v is not None})
        await self._send(frame, spend=False)
        return True

    async def refresh(self, token: str) -> None:
        """Replace the token before it expires; later reconnects use it."""
        await self._request({"t": "refresh", "token": token})
        self._token = token

    async def ping(self) -> float:
        """Round-trip time in seconds; also stored as `latency`."""
        started = time.monotonic()
        await self._request({"t": "ping", "ts": int(time.time() * 1000)})
        self.latency = time.monotonic() - started
        return self.latency

    # --- streams and lifecycle -------------------------------------------

    def turns(self) -> AsyncIterator[Turn]:
        """Turns this client did not start (room turns, snapshot turns), unless `on_turn`."""
        return self._turn_inbox.__aiter__()

    def events(self) -> AsyncIterator[Event]:
        """Room and server events (`Said`, `Typing`, `Presence` …), unless `on_event`."""
        return self._event_inbox.__aiter__()

    def statistics(self) -> ClientStatistics:
        counts = {**self._conn.counts, **self._counts, "duplicates": self._router.duplicates}
        return ClientStatistics(**counts)

    @property
    def closed_error(self) -> ConnectionClosedError | None:
        """Why the client closed for good; None while open or after `close()`."""
        return None if self._closing else self._error

    async def wait_closed(self) -> None:
        """Wait until the client is closed; raise why, unless `close()` closed it."""
        await self._closed.wait()
        if self._error is not None and not self._closing:
            raise self._error

    async def close(self) -> None:
        """Close the session for good (code 1000: the server forgets it)."""
        self._closing = True
        await self._conn.close()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- session ----------------------------------------------------------

    async def _start(self) -> None:
        await self._conn.open()
        self._spawn(self._report_seen())

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hello(self, resume: bool) -> Frame:
        if resume and self._token_provider is not None:
            token = self._token_provider()
            self._token = await token if inspect.isawaitable(token) else token
        hello: Frame = {"t": "hello", "token": self._token, "client": self._conn.client_name}
        if resume and self.session is not None:
            hello["resume"] = {"session": self.session, "seq": self._router.last_seq}
        return hello

    def _welcomed(self, welcome: Frame, reconnected: bool) -> None:
        resumed = welcome.get("resumed") is True
        self.session = str(welcome.get("session"))
        self.player = str(welcome.get("player"))
        info = welcome.get("server") or {}
        self.server = ServerInfo(
            str(info.get("name")), str(info.get("version")), str(info.get("node"))
        )
        self.limits = dict(welcome.get("limits") or {})
        self.heartbeat = welcome.get("heartbeat")
        self._budget = RateBudget(
            self.limits.get("rate_per_s", 20), self.limits.get("rate_burst", 40)
        )
        if not resumed:
            self._router.new_session(int(welcome.get("seq") or 0))
        self._counts["resumed" if resumed else "new_sessions"] += 1
        if reconnected:
            self._spawn(self._settle(resumed, self._conn.generation))

    async def _settle(self, resumed: bool, generation: int) -> None:
        """After a reconnect: resend or fail requests, and end turns the server forgot."""
        try:
            async with asyncio.timeout(FENCE_TIMEOUT):
                await self._request({"t": "ping", "ts": 0})
        except (NpcClientError, TimeoutError):
            return  # the next reconnect settles instead
        for pending in self._router.requests.sent_before(generation):
            if resumed:  # every earlier answer has arrived: the server never got these
                await self._send_pending(pending)
            else:
                pending.future.set_exception(RequestLost("the session was replaced"))
        if not resumed:
            self._router.snapshot_done()

    def _finish(self, error: ConnectionClosedError) -> None:
        self._error = error
        self._router.fail_all(error)
        self._turn_inbox.close()
        self._event_inbox.close()
        self._closed.set()

    # --- sending ----------------------------------------------------------

    async def _send(self, frame: Frame, *, spend: bool = True) -> int:
        """Send once the session is open; returns the connection generation used."""
        if spend:
            self._budget.spend_nowait()
        return await self._conn.send(msgpack.packb(frame))

    async def _send_pending(self, pending: Pending) -> None:
        pending.generation = await self._send(pending.frame)

    async def _request(self, frame: Frame) -> Frame:
        """Send a request (it gets an `id`) and return its `ack`; an `error` raises."""
        return (await self._exchange(frame)).future.result()

    async def _exchange(self, frame: Frame) -> Pending:
        pending = self._router.requests.add(frame)
        try:
            await self._send_pending(pending)
            async with asyncio.timeout(self._request_timeout):
                await pending.future
            return pending
        finally:
            self._router.requests.discard(frame["id"])

    # --- turns and events -------------------------------------------------

    def _new_turn(self, turn_id: str, mine: bool) -> Turn:
        return Turn(turn_id, mine=mine, on_consumed=self._consumed, interrupt=self._interrupt_turn)

    async def _interrupt_turn(self, turn: Turn, shown: int) -> None:
        try:
            await self._request({"t": "interrupt", "turn": turn.id, "shown": shown})
        except UnknownTurn:
            if not turn.ended:
                raise

    def _consumed(self, turn: Turn) -> None:
        self._seen_dirty[turn.id] = turn
        self._seen_wanted.set()

    async def _report_seen(self) -> None:
        """Send `seen` at most every SEEN_INTERVAL, within the rate budget."""
        while True:
            await self._seen_wanted.wait()
            await asyncio.sleep(SEEN_INTERVAL)
            self._seen_wanted.clear()
            for turn in list(self._seen_dirty.values()):
                if turn.ended or turn.consumed <= turn.reported:
                    del self._seen_dirty[turn.id]  # after turn.end the server no longer listens
                    continue
                if not self._budget.take_optional_nowait():
                    self._seen_wanted.set()
                    break
                del self._seen_dirty[turn.id]
                turn.reported = turn.consumed
                await self._send(
                    {"t": "seen", "turn": turn.id, "shown": turn.consumed}, spend=False
                )
                self._counts["seen_sent"] += 1

    def _foreign_turn(self, turn: Turn) -> None:
        if self._on_turn is None:
            self._turn_inbox.put_nowait(turn)
            return
        try:
            self._on_turn(turn)
        except Exception:
            log.exception("on_turn callback failed")

    def _event(self, event: Event) -> None:
        if self._on_event is None:
            self._event_inbox.put_nowait(event)
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("on_event callback failed")
