"""The socket side of a session: handshake, reading, reconnecting, sending.

`Connection` owns the current WebSocket. Its supervisor task reads frames
(answering server `ping`s itself) and, when the socket closes with a code
that allows it, reconnects with jittered exponential backoff, asking the
client for a fresh `hello` each time. Close codes become exceptions here and
nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as open_websocket
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from npc_client.errors import CloseCode, ConnectionClosedError, ProtocolError, ServerUnreachable

log = logging.getLogger(__name__)

Frame = dict[str, Any]
MAX_MESSAGE_BYTES = 16 * 2**20
TOKEN_EXPIRED = CloseCode.TOKEN_EXPIRED
# docs/protocol.md: after 4029 "reconnect after a backoff (a few seconds, growing)".
RATE_LIMITED_DELAY = 2.0


class ConnectionState(Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: `initial * factor**attempt`, capped, times a random 0.5-1."""

    initial: float = 0.1
    maximum: float = 10.0
    factor: float = 2.0
    give_up_after: float | None = 120.0  # the server's default resume window

    def delay(self, attempt: int, code: int | None = None) -> float:
        """The wait before reconnect attempt `attempt` (0 first), after a close with `code`:
        after 4029 (rate limited) it starts at a few seconds."""
        initial, maximum = self.initial, self.maximum
        if code == CloseCode.RATE_LIMITED:
            initial, maximum = max(initial, RATE_LIMITED_DELAY), max(maximum, RATE_LIMITED_DELAY)
        return min(maximum, initial * self.factor**attempt) * random.uniform(0.5, 1.0)


class RateBudget:
    """A token bucket mirroring the server's inbound limit (`limits.rate_per_s`).

    Every frame spends a token; optional frames (`seen`, `typing`) are only
    sent while half the burst is left, so they never push requests over.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = max(rate, 0.1)
        self.burst = max(burst, 1)
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def spend_nowait(self) -> None:
        self._refill()
        self._tokens = max(0.0, self._tokens - 1.0)

    def take_optional_nowait(self) -> bool:
        self._refill()
        if self._tokens < 1.0 + self.burst / 2:
            return False
        self._tokens -= 1.0
        return True


def decode(data: bytes | str) -> Frame | None:
    """One server message as a frame, or None if it is not a msgpack map with `t`."""
    if not isinstance(data, bytes):
        return None
    try:
        value = msgpack.unpackb(data, raw=False)
    except Exception:  # msgpack raises many unrelated types on garbage
        return None
    return value if isinstance(value, dict) and isinstance(value.get("t"), str) else None


def closed_error(exc: ConnectionClosed) -> ConnectionClosedError:
    rcvd = exc.rcvd
    return ConnectionClosedError(rcvd.code, rcvd.reason) if rcvd else ConnectionClosedError(1006)


def describe_failure(exc: BaseException) -> str:
    """Why a WebSocket could not be opened, in a few words."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code} instead of a WebSocket"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


@dataclass(frozen=True, slots=True)
class Callbacks:
    """How the connection talks to the client, which owns the protocol state."""

    hello: Callable[[bool], Awaitable[Frame]]  # resume? -> the hello frame to send
    welcome: Callable[[Frame, bool], None]  # (welcome, reconnected)
    frame: Callable[[Frame], None]
    closed: Callable[[ConnectionClosedError], None]  # closed for good, once
    state: Callable[[ConnectionState], None] | None = None  # the caller's `on_state`


class Connection:
    """The current WebSocket of a session and the task that keeps one open."""

    def __init__(
        self,
        url: str,
        callbacks: Callbacks,
        *,
        client_name: str,
        reconnect: bool,
        renew_token: bool,
        backoff: Backoff,
        open_timeout: float,
    ) -> None:
        self.url = url
        self.client_name = client_name
        self._state = ConnectionState.CONNECTING
        self.generation = 0  # counts sockets that got a welcome
        self.counts = {"connects": 0, "reconnect_attempts": 0, "frames": 0, "pings_answered": 0}
        self._cb = callbacks
        self._reconnect_enabled = reconnect
        self._renew_token = renew_token
        self._backoff = backoff
        self._open_timeout = open_timeout
        self._ws: ClientConnection | None = None
        self._open = asyncio.Event()
        self._closing = False
        self._error: ConnectionClosedError | None = None
        self._drain_delay: float | None = None
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def state(self) -> ConnectionState:
        return self._state

    @state.setter
    def state(self, state: ConnectionState) -> None:
        if state is self._state:
            return
        self._state = state
        if self._cb.state is not None:
            try:
                self._cb.state(state)
            except Exception:
                log.exception("on_state callback failed")

    async def open(self) -> None:
        """The first connection: no retries, errors go to the caller."""
        ws, welcome = await self._handshake(resume=False)
        self._opened(ws, welcome, reconnected=False)
        self._supervisor = asyncio.ensure_future(self._supervise())

    async def close(self) -> None:
        self._closing = True
        self._finish(ConnectionClosedError(1000, "closed by the client", reconnectable=False))
        if self._ws is not None:
            await self._ws.close()
        if self._supervisor is not None and self._supervisor is not asyncio.current_task():
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)

    async def send(self, data: bytes) -> int:
        """Send once a socket is open; returns the generation of the socket used."""
        while True:
            ws = await self._wait_open()
            generation = self.generation
            try:
                await ws.send(data)
                return generation
            except ConnectionClosed:
                if self._ws is ws and self.state is ConnectionState.OPEN:
                    self._open.clear()  # the supervisor reconnects and sets it again

    async def _wait_open(self) -> ClientConnection:
        while True:
            if self.state is ConnectionState.CLOSED:
                raise self._error or ConnectionClosedError(1000)
            if self._open.is_set() and self._ws is not None:
                return self._ws
            await self._open.wait()

    async def _handshake(self, resume: bool) -> tuple[ClientConnection, Frame]:
        hello = await self._cb.hello(resume)
        try:
            ws = await open_websocket(
                self.url,
                compression=None,
                max_size=MAX_MESSAGE_BYTES,
                open_timeout=self._open_timeout,
                user_agent_header=self.client_name,
            )
        except (OSError, InvalidHandshake) as exc:
            raise ServerUnreachable(self.url, describe_failure(exc)) from exc
        try:
            await ws.send(msgpack.packb(hello))
            async with asyncio.timeout(self._open_timeout):
                welcome = decode(await ws.recv())
        except ConnectionClosed as exc:
            raise closed_error(exc) from None
        except TimeoutError:
            await ws.close()
            raise ProtocolError(f"no welcome within {self._open_timeout:g} s") from None
        if welcome is None or welcome.get("t") != "welcome":
            await ws.close()
            raise ProtocolError(f"expected welcome, got {welcome!r:.100}")
        return ws, welcome

    def _opened(self, ws: ClientConnection, welcome: Frame, *, reconnected: bool) -> None:
        self.counts["connects"] += 1
        self.generation += 1
        self._ws = ws
        self._cb.welcome(welcome, reconnected)
        self.state = ConnectionState.OPEN
        self._open.set()

    async def _supervise(self) -> None:
        try:
            while self._ws is not None:
                closed = await self._read(self._ws)
                if self._closing:
                    return
                self._open.clear()
                if not self._may_retry(closed):
                    self._finish(closed)
                    return
                await self._reconnect(closed)
        except ConnectionClosedError as exc:
            self._finish(exc)
        except Exception as exc:
            log.exception("npc client failed")
            self._finish(ConnectionClosedError(1006, f"client error: {exc!r}", reconnectable=False))

    async def _read(self, ws: ClientConnection) -> ConnectionClosedError:
        while True:
            try:
                data = await ws.recv()
            except ConnectionClosed as exc:  # carries the close code (`close_code` needs 14.1)
                return closed_error(exc)
            self.counts["frames"] += 1
            frame = decode(data)
            if frame is None:
                log.warning("ignored a server message that is not a protocol frame")
            elif frame["t"] == "ping":  # answered at once, ahead of anything queued
                with contextlib.suppress(ConnectionClosed):  # the next recv() reports it
                    await ws.send(msgpack.packb({"t": "pong", "ts": frame.get("ts")}))
                self.counts["pings_answered"] += 1
            else:
                if frame["t"] == "draining":
                    self._drain_delay = float(frame.get("retry_after") or 1.0)
                self._cb.frame(frame)

    def _may_retry(self, closed: ConnectionClosedError) -> bool:
        if closed.code == TOKEN_EXPIRED and not self._renew_token:
            closed.reconnectable = False
            closed.args = (f"{closed.args[0]} (pass token_provider= to renew the token)",)
        return self._reconnect_enabled and closed.reconnectable

    async def _reconnect(self, closed: ConnectionClosedError) -> None:
        """Resume until a socket opens, the server refuses for good, or time is up.

        After `draining` the first attempt waits the server's `retry_after`:
        the old socket was kept until the server closed it, so the turns it was
        finishing streamed to the end.
        """
        self.state = ConnectionState.RECONNECTING
        give_up = self._backoff.give_up_after
        started = time.monotonic()
        last_code = closed.code
        delay = self._drain_delay
        if delay is None:
            delay = self._backoff.delay(0, last_code)
        self._drain_delay = None
        attempt = 0
        while True:
            await asyncio.sleep(delay)
            self.counts["reconnect_attempts"] += 1
            try:
                ws, welcome = await self._handshake(resume=True)
            except (ServerUnreachable, ProtocolError) as exc:
                log.info("reconnect to %s failed: %s", self.url, exc)
            except ConnectionClosedError as exc:
                if not self._may_retry(exc):
                    raise
                last_code = exc.code
            else:
                self._opened(ws, welcome, reconnected=True)
                return
            attempt += 1
            if give_up is not None and time.monotonic() - started > give_up:
                raise ConnectionClosedError(
                    closed.code, f"gave up reconnecting after {give_up:g} s", reconnectable=True
                )
            delay = self._backoff.delay(attempt, last_code)

    def _finish(self, error: ConnectionClosedError) -> None:
        if self.state is ConnectionState.CLOSED:
            return
        self.state = ConnectionState.CLOSED
        self._error = error
        self._open.set()  # wakes senders, who then see CLOSED
        self._cb.closed(error)
