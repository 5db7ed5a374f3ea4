"""The asyncio client: one protocol v1 session that outlives its WebSockets.

`NpcClient` holds the protocol state (through `FrameRouter`) and the public
API; `Connection` keeps a socket open and resumes the session after a drop,
so turns go on streaming into the same `Turn` handles. After every reconnect
a `ping` fences the server's backlog: once its `pong` is in, requests the
server never received are resent (resumed session) or failed (new session),
and turns missing from a new session's snapshot end.

With a token provider the client renews its token ahead of `exp` with
`refresh`, so the server never has to close with 4002. Every background task
belongs to the client and ends when it closes, whether `close()` or the
server closed it for good.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
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
    BadFrame,
    ConnectionClosedError,
    NpcClientError,
    ProtocolError,
    RequestLost,
    UnknownCall,
    UnknownTurn,
)
from npc_client.events import Event, Inbox
from npc_client.router import Frame, FrameRouter, Pending
from npc_client.tokens import REFRESH_MARGIN, refresh_delay, token_expiry
from npc_client.turns import ToolCall, Turn

log = logging.getLogger(__name__)

VERSION = "0.1.0"
SEEN_INTERVAL = 0.25
FENCE_TIMEOUT = 10.0
DEFAULT_BACKOFF = Backoff()

TokenProvider = Callable[[], str | Awaitable[str]]
# A tool handler gets the call and returns its result, or an awaitable of it.
ToolHandler = Callable[[ToolCall], Any]
ERROR_CHARS = 200  # of a failed handler's message, in the `{"error": …}` it answers


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
    refreshes: int
    tools_answered: int


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
    tools: Mapping[str, ToolHandler] | None = None,
    backoff: Backoff = DEFAULT_BACKOFF,
    request_timeout: float | None = 10.0,
    open_timeout: float = 10.0,
    refresh_margin: float = REFRESH_MARGIN,
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
        tools=tools,
        backoff=backoff,
        request_timeout=request_timeout,
        open_timeout=open_timeout,
        refresh_margin=refresh_margin,
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
        tools: Mapping[str, ToolHandler] | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        request_timeout: float | None = 10.0,
        open_timeout: float = 10.0,
        refresh_margin: float = REFRESH_MARGIN,
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
        self._tools: dict[str, ToolHandler] = dict(tools or {})
        self._request_timeout = request_timeout
        self._refresh_margin = refresh_margin
        self._router = FrameRouter(
            self._new_turn,
            self.act,
            self._foreign_turn,
            self._event,
            answer_tool=self.answer_tool,
            on_tool=self._tool_asked,
            player=lambda: self.player,
        )
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
        self._tool_inbox: Inbox[ToolCall] = Inbox()
        self._budget = RateBudget(20.0, 40)
        self._closed = asyncio.Event()
        self._closing = False
        self._error: ConnectionClosedError | None = None
        self._seen_dirty: dict[str, Turn] = {}
        self._seen_wanted = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresher: asyncio.Task[None] | None = None
        self._counts = {
            "resumed": 0,
            "new_sessions": 0,
            "seen_sent": 0,
            "refreshes": 0,
            "tools_answered": 0,
        }

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
        """Replace the token before it expires; later reconnects use it.

        With a `token_provider` the client does this by itself ahead of `exp`.
        """
        await self._request({"t": "refresh", "token": token})
        self._token = token
        self._counts["refreshes"] += 1
        self._schedule_refresh()

    async def answer_tool(self, call: ToolCall | str, result: Any) -> None:
        """Answer a tool call asked of this client (`ToolCall.answer` does the same).

        Returns after the server's ack; raises `UnknownCall` when the call no
        longer waits for this player's answer (it ended, timed out, was
        cancelled, or asks someone else).
        """
        call_id = call if isinstance(call, str) else call.id
        await self._request({"t": "tool.result", "call": call_id, "result": result})
        handle = self._router.calls.get(call_id) if isinstance(call, str) else call
        if handle is not None:
            handle.answered = True
        self._counts["tools_answered"] += 1

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

    def tool_calls(self) -> AsyncIterator[ToolCall]:
        """Tool calls this client is asked to answer, except those a `tools` handler answers."""
        return self._tool_inbox.__aiter__()

    def statistics(self) -> ClientStatistics:
        counts = {**self._conn.counts, **self._counts, "duplicates": self._router.duplicates}
        return ClientStatistics(**counts)

    @property
    def closed_error(self) -> ConnectionClosedError | None:
        """Why the client closed for good; None while open or after `close()`."""
        return None if self._closing else self._error

    async def wait_closed(self) -> None:
        """Wait until the client is closed; raise why, unless `close()` closed it.

        By then the client's background tasks have ended.
        """
        await self._closed.wait()
        await self._reap()
        if self._error is not None and not self._closing:
            raise self._error

    async def close(self) -> None:
        """Close the session for good (code 1000: the server forgets it)."""
        self._closing = True
        await self._conn.close()
        self._stop_tasks()
        await self._reap()

    # --- session ----------------------------------------------------------

    async def _start(self) -> None:
        await self._conn.open()
        self._spawn(self._report_seen())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """Run `coro` as one of the client's tasks, which end when it closes."""
        if self._closed.is_set():
            coro.close()
            return None
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _stop_tasks(self) -> None:
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def _reap(self) -> None:
        """Wait for the client's tasks, stopped by the close, to end."""
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _new_token(self) -> str:
        assert self._token_provider is not None
        token = self._token_provider()
        return await token if inspect.isawaitable(token) else token

    async def _hello(self, resume: bool) -> Frame:
        if resume and self._token_provider is not None:
            self._token = await self._new_token()
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
        self._schedule_refresh()  # the hello's token counts now
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
                try:
                    await self._send_pending(pending)
                except ConnectionClosedError:
                    return  # closed for good: fail_all() told the request's waiter
            else:
                pending.future.set_exception(RequestLost("the session was replaced"))
        if not resumed:
            self._router.snapshot_done()

    def _finish(self, error: ConnectionClosedError) -> None:
        """Closed for good (by `close()` or the server): waiters learn it, tasks end."""
        self._error = error
        self._router.fail_all(error)
        self._turn_inbox.close()
        self._event_inbox.close()
        self._tool_inbox.close()
        self._stop_tasks()
        self._closed.set()

    # --- token renewal ----------------------------------------------------

    def _schedule_refresh(self) -> None:
        """Plan the renewal of the current token ahead of its `exp` (with a provider)."""
        old, self._refresher = self._refresher, None
        if old is not None and old is not asyncio.current_task():
            old.cancel()
        if self._token_provider is None:
            return
        delay = refresh_delay(self._token, time.time(), self._refresh_margin)
        if delay is not None:
            self._refresher = self._spawn(self._refresh_when_due(delay))

    async def _refresh_when_due(self, delay: float) -> None:
        """Renew the token with `refresh`; on failure try again while it is valid."""
        await asyncio.sleep(delay)
        while True:
            current = self._token
            expires = token_expiry(current) or 0.0
            try:
                token = await self._new_token()
                if (token_expiry(token) or 0.0) <= expires:
                    raise NpcClientError("token_provider gave no token that expires later")
                await self.refresh(token)  # plans the next renewal
                return
            except ConnectionClosedError:
                return
            except Exception as exc:  # the provider is the caller's code
                left = expires - time.time()
                if left <= 0:
                    log.warning(
                        "could not renew the token before it expired (%s); the client "
                        "resumes with a new one after the server's 4002",
                        exc,
                    )
                    return
                log.warning("token renewal failed, trying again: %s", exc)
                await asyncio.sleep(max(1.0, left / 4))

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
        try:
            await self._report_seen_forever()
        except ConnectionClosedError:
            return  # closed for good: nothing more to report

    async def _report_seen_forever(self) -> None:
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

    # --- tools ------------------------------------------------------------

    def _tool_asked(self, call: ToolCall) -> None:
        """A `tool` frame: a handler answers it, else `tool_calls()` yields it."""
        if not call.for_me:
            return  # the game server or another player answers it; the turn lists it
        handler = self._tools.get(call.name)
        if handler is None:
            self._tool_inbox.put_nowait(call)
        else:
            self._spawn(self._run_tool(call, handler))

    async def _run_tool(self, call: ToolCall, handler: ToolHandler) -> None:
        """Answer `call` with the handler's result. A handler that raises answers
        `{"error": …}`, as the server tells a model of a failed call, so the NPC goes
        on at once (a scripted NPC falls back to its defaults) instead of waiting
        for the tool's timeout."""
        try:
            value = handler(call)
            result = await value if inspect.isawaitable(value) else value
            msgpack.packb(result)  # a result that cannot go on the wire fails here
        except Exception as exc:
            log.warning("tool handler %r failed; answering an error", call.name, exc_info=True)
            result = {"error": f"the tool failed: {type(exc).__name__}: {exc}"[:ERROR_CHARS]}
        for last_try in (False, True):
            if call.ended:
                what = (call.id, call.name, call.status)
                log.info("tool call %s (%s) ended (%s) before it was answered", *what)
                return
            try:
                await self.answer_tool(call, result)
                return
            except UnknownCall:
                log.info("tool call %s (%s) no longer waits for an answer", call.id, call.name)
                return
            except BadFrame as exc:  # e.g. nested too deep, or a non-string map key
                if last_try:
                    log.warning("tool %r: the server refused the error too: %s", call.name, exc)
                    return
                log.warning("tool %r: the server refused the result: %s", call.name, exc)
                result = {"error": f"the client's answer was refused: {exc.message}"}
            except ConnectionClosedError:
                return
            except (NpcClientError, TimeoutError) as exc:
                log.warning("tool %r: could not answer call %s: %r", call.name, call.id, exc)
                return
