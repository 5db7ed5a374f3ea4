"""Reading one streamed chat-completion response: its SSE events, within the turn's limits.

`EventReader` takes the body bytes of a `StreamResponse` (http_pool.py) as
they arrive, each wait bounded by the turn's `Deadline` (first token, idle
gap, total, from `TurnLimits`), splits them into events with `SSEDecoder`,
and stops at `[DONE]`. Transport failures become player-safe
`GenerationError`s here, with the messages the SDK's reader led to before.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from npc_server.backends.base import GenerationError
from npc_server.backends.deadline import Deadline, Expired
from npc_server.backends.http_pool import BodyCut
from npc_server.backends.sse import EventTooLarge, SSEDecoder

DRAIN_S = 0.1  # after [DONE], how long the rest of the body is awaited (as the SDK does)
MALFORMED = "the model server sent a malformed chunk"
CUT = "the connection to the model server was cut mid-reply"


class Body(Protocol):
    """A response body read as it arrives (`http_pool.StreamResponse` is one)."""

    def read_nowait(self) -> bytes | None: ...
    def readable(self) -> asyncio.Future[None]: ...
    @property
    def complete(self) -> bool: ...


class TimeoutSettings(Protocol):
    """The timeout settings of a backend (`OpenAISettings` has them)."""

    @property
    def first_token_timeout_s(self) -> float: ...
    @property
    def idle_timeout_s(self) -> float: ...
    @property
    def total_timeout_s(self) -> float: ...


class TurnLimits:
    """The waits of one turn (first token, idle gap, total) and what each expiry says."""

    __slots__ = ("_first_token_at", "_idle_s", "_settings", "_started", "_time", "total_at")

    def __init__(self, settings: TimeoutSettings) -> None:
        self._settings = settings
        self._time = asyncio.get_running_loop().time
        self.total_at = self._time() + settings.total_timeout_s
        self._idle_s = settings.idle_timeout_s
        self._first_token_at = self.total_at
        self._started = False

    @property
    def idle_s(self) -> float:
        """The longest gap allowed between chunks once a token has arrived."""
        return self._idle_s

    def start_attempt(self) -> None:
        """A request is being sent: the first-token wait starts now."""
        self._first_token_at = self._time() + self._settings.first_token_timeout_s

    def next_wait(self, started: bool) -> float:
        """Until when the next chunk may be awaited (`started`: a token has arrived)."""
        self._started = started
        when = self._time() + self._idle_s if started else self._first_token_at
        return when if when < self.total_at else self.total_at

    def expired(self, when: float) -> GenerationError:
        """The timeout error for a wait that was bounded by `when`."""
        s = self._settings
        if when >= self.total_at:
            text = f"the reply took longer than {s.total_timeout_s:g} s"
        elif self._started:
            text = f"the model server stalled for over {s.idle_timeout_s:g} s"
        else:
            text = f"the model server sent no reply within {s.first_token_timeout_s:g} s"
        return GenerationError(text, reason="timeout")


class EventReader:
    """The SSE events of one response body, each read bounded by the turn's limits."""

    __slots__ = ("_body", "_deadline", "_decoder", "_done", "_limits")

    def __init__(self, body: Body, limits: TurnLimits, deadline: Deadline) -> None:
        self._body = body
        self._decoder = SSEDecoder()
        self._limits = limits
        self._deadline = deadline
        self._done = False

    async def next_events(self, started: bool) -> list[bytes] | None:
        """The data of the next complete events; None once the stream is over."""
        if self._done:
            await self._drain()
            return None
        when = self._limits.next_wait(started)
        while (data := await self._read(when)) is not None:
            try:
                events = self._decoder.feed(data)
            except EventTooLarge:
                raise GenerationError(MALFORMED) from None
            if events:
                return self._until_done(events)
        return None

    def _until_done(self, events: list[bytes]) -> list[bytes]:
        for i, event in enumerate(events):
            if event.startswith(b"[DONE]"):
                self._done = True
                return events[:i]
        return events

    async def _read(self, when: float) -> bytes | None:
        """The body bytes that arrived since the last read (waiting for some), None at its end."""
        body = self._body
        while True:
            try:
                data = body.read_nowait()
            except BodyCut:
                raise GenerationError(CUT) from None
            if data is None or data:
                return data
            try:
                await self._deadline.wait(body.readable(), when)
            except Expired:
                raise self._limits.expired(when) from None

    async def _drain(self) -> None:
        """Wait (briefly) for the body's end, so the connection can be reused."""
        body = self._body
        if body.complete:
            return
        when = min(self._limits.total_at, asyncio.get_running_loop().time() + DRAIN_S)
        try:
            while (data := body.read_nowait()) is not None:
                if not data:
                    await self._deadline.wait(body.readable(), when)
        except (Expired, BodyCut):
            pass  # not reusable: closing the response drops the connection
