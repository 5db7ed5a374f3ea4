"""Reading one streamed chat-completion response: its SSE events, within the turn's limits.

`EventReader` pulls body bytes from the httpx response, each read bounded by
the turn's `Deadline` (first token, idle gap, total, from `TurnLimits`),
splits them into events with `SSEDecoder`, and stops at `[DONE]`. Transport
failures become player-safe `GenerationError`s here, the same ones the SDK's
own stream reader would have led to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Protocol

import anyio
import httpx2

from npc_server.backends.base import GenerationError
from npc_server.backends.deadline import Deadline, Expired
from npc_server.backends.sse import EventTooLarge, SSEDecoder

log = logging.getLogger(__name__)

DRAIN_S = 0.1  # after [DONE], how long the rest of the body is awaited (as the SDK does)
MALFORMED = "the model server sent a malformed chunk"
# What the SDK counts as a cut connection while a body streams.
_CUT = (httpx2.RequestError, ssl.SSLError, anyio.EndOfStream)


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

    def __init__(self, response: httpx2.Response, limits: TurnLimits, deadline: Deadline) -> None:
        self._response = response
        self._chunks = response.aiter_bytes()
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
        try:
            return await self._deadline.wait(self._chunks.__anext__(), when)
        except StopAsyncIteration:
            return None
        except Expired:
            raise self._limits.expired(when) from None
        except httpx2.TimeoutException:
            raise GenerationError(
                "the model server did not answer in time", reason="timeout"
            ) from None
        except _CUT:
            raise GenerationError("the connection to the model server was cut mid-reply") from None
        except Exception:
            log.exception("unexpected failure reading the model server's stream")
            raise GenerationError("the model client failed mid-reply") from None

    async def _drain(self) -> None:
        """Read the body to its end so an HTTP/1.1 connection can be reused."""
        if self._response.http_version != "HTTP/1.1" or self._response.is_closed:
            return
        when = min(self._limits.total_at, asyncio.get_running_loop().time() + DRAIN_S)
        with contextlib.suppress(StopAsyncIteration, Expired, *_CUT):
            while True:
                await self._deadline.wait(self._chunks.__anext__(), when)
