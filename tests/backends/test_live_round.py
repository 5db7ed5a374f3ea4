"""`LiveRound`'s one timer: how often a streamed turn arms it, and that an early one re-arms.

A turn read through `deliver()` bounds its waits with one lazily re-armed
timer; these count the timers it asks the loop for, and check that a timer
armed before the first-token deadline does not end the turn early.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from npc_server.backends.base import TextPiece
from npc_server.backends.live_round import LiveRound
from npc_server.backends.openai import OpenAIBackend

from .openai_stub import EventEncoder, reply
from .openai_support import NPC, Reading, collect
from .raw_http import RawReply, RawServer, chunked

SSE = EventEncoder(include_usage=False).body(reply("Hi", " there", usage=False))
PIECES = [TextPiece("Hi"), TextPiece(" there")]
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


@pytest.fixture
async def raw() -> AsyncIterator[RawServer]:
    async with RawServer() as server:
        yield server


@pytest.fixture
async def backend(raw: RawServer) -> AsyncIterator[Callable[..., OpenAIBackend]]:
    made: list[OpenAIBackend] = []

    def make(**settings: Any) -> OpenAIBackend:
        merged = {"base_url": raw.base_url, "model": "m", "retries": 0, **settings}
        made.append(OpenAIBackend(NPC, merged))
        return made[-1]

    yield make
    for b in made:
        await b.aclose()


@pytest.fixture
def delivering() -> Iterator[None]:
    Reading.mode = "deliver"
    yield
    Reading.mode = "generate"


@contextlib.contextmanager
def live_round_timers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The delays of the timers `LiveRound`s ask the running loop for."""
    loop = asyncio.get_running_loop()
    call_at = loop.call_at
    delays: list[float] = []

    def counting(when: float, callback: Callable[..., object], *args: Any, **kw: Any) -> Any:
        if isinstance(getattr(callback, "__self__", None), LiveRound):
            delays.append(when - loop.time())
        return call_at(when, callback, *args, **kw)

    monkeypatch.setattr(loop, "call_at", counting)
    yield delays


@pytest.mark.usefixtures("delivering")
async def test_a_turn_whose_body_ends_with_its_done_arms_one_timer(
    raw: RawServer, backend: Callable[..., OpenAIBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first token's idle wait is no earlier than the timer armed with the round,
    and a body whose end came with [DONE] needs no wait for it: one timer a turn."""
    b = backend()
    raw.script(
        RawReply((chunked(SSE),)), RawReply((HEAD, b"%x\r\n%s\r\n0\r\n\r\n" % (len(SSE), SSE)))
    )
    with live_round_timers(monkeypatch) as delays:
        assert await collect(b) == (PIECES, None)  # head and body in one read
        assert await collect(b) == (PIECES, None)  # the body in a read of its own
    assert len(delays) == 2


@pytest.mark.usefixtures("delivering")
async def test_a_body_whose_end_is_late_is_awaited_briefly(
    raw: RawServer, backend: Callable[..., OpenAIBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After [DONE] without the body's end, the drain wait is armed (and gives up)."""
    b = backend()
    body = b"%x\r\n%s\r\n" % (len(SSE), SSE)  # no last chunk: the body never ends
    raw.script(RawReply((HEAD, body), hang=True))
    with live_round_timers(monkeypatch) as delays:
        assert await asyncio.wait_for(collect(b), 2.0) == (PIECES, None)
    assert len(delays) == 2
    assert delays[1] <= 0.1 + 1e-3
    await asyncio.wait_for(raw.wait_closes(1), 1.0)  # not reusable: dropped


class SlowFirstToken:
    """A server that sends the head at once and the body after `delay_s`."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        if self.handlers:  # each ends once its client has left
            await asyncio.wait(self.handlers, timeout=1.0)
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        writer.write(HEAD)
        await writer.drain()
        await asyncio.sleep(self.delay_s)
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(SSE), SSE))
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()


@pytest.mark.usefixtures("delivering")
async def test_a_first_token_later_than_the_idle_wait_is_no_timeout() -> None:
    """The round's timer fires at the idle wait, before the first-token deadline: it
    re-arms at that deadline instead of ending the turn."""
    async with SlowFirstToken(0.25) as base_url:
        b = OpenAIBackend(
            NPC,
            {
                "base_url": base_url,
                "model": "m",
                "retries": 0,
                "idle_timeout_s": 0.05,
                "first_token_timeout_s": 5.0,
            },
        )
        try:
            assert await asyncio.wait_for(collect(b), 5.0) == (PIECES, None)
        finally:
            await b.aclose()
