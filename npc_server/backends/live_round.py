"""One chat-completion stream read in its connection's callbacks: pieces handed over as bytes arrive.

`EventReader` (stream_reader.py) wakes the turn's task for every chunk the
model server sends: a future, a task step, the deadline re-armed, an async
generator resumed at each level up to the turn runner. A `LiveRound` does the
same work inside the connection's `data_received`: the body's SSE events are
decoded and parsed there, and each piece goes straight to the turn's `take`.
The task waits only for what needs a task: a tool call to answer, the end of
the body, a failure.

It behaves as `EventReader` does: the same waits from `TurnLimits` (first
token; the idle gap, restarted by each read that completes events; total),
the same errors, `[DONE]` ends the reply and the rest of the body is awaited
for `DRAIN_S` so the connection can be reused. A tool call pauses the reading:
the pieces and events behind it wait until the caller has answered it
(`resume()`), the connection's buffer fills and stops the socket, and no wait
runs meanwhile, as no read is awaited while `generate()` has yielded a call.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Protocol

from npc_server.backends.base import GenerationError, Piece, TextPiece, ToolCallPiece
from npc_server.backends.chat_chunks import StreamAssembler
from npc_server.backends.http_pool import BodyCut
from npc_server.backends.sse import EventTooLarge, SSEDecoder
from npc_server.backends.stream_reader import CUT, DRAIN_S, MALFORMED, TurnLimits

log = logging.getLogger(__name__)

PAST_LAST_ROUND = "NPC %r: tool call past the last round; skipped"


class ListenedBody(Protocol):
    """A response body that calls back as it arrives (`http_pool.StreamResponse` is one)."""

    def read_nowait(self) -> bytes | None: ...
    @property
    def complete(self) -> bool: ...
    def listen(
        self, listener: Callable[[], None] | None, sink: Callable[[bytes], bool] | None = None
    ) -> None: ...


class LiveRound:
    """The pieces of one completion stream, handed to `take` from the body's callbacks.

    `parse` turns one event's data into pieces (raising `GenerationError`);
    `on_last` runs right after the reply's last piece when the reply asked for
    no tool call, in the same callback. Tool calls (when `calls_allowed`) come
    out of `next_call()`; others are logged and skipped, as `generate()` does.
    """

    __slots__ = (
        "_assembler",
        "_body",
        "_calls_allowed",
        "_decoder",
        "_done",
        "_error",
        "_handle",
        "_held",
        "_limits",
        "_loop",
        "_npc_id",
        "_on_last",
        "_over",
        "_parse",
        "_paused",
        "_queued",
        "_ready",
        "_replied",
        "_said_append",
        "_take",
        "_timer_at",
        "_waiter",
        "_when",
        "calls",
        "said",
    )

    def __init__(
        self,
        body: ListenedBody,
        limits: TurnLimits,
        assembler: StreamAssembler,
        parse: Callable[[bytes], list[Piece]],
        take: Callable[[Piece], None],
        on_last: Callable[[], None],
        *,
        calls_allowed: bool,
        npc_id: str,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._body = body
        self._limits = limits
        self._assembler = assembler
        self._parse = parse
        self._take = take
        self._on_last = on_last
        self._calls_allowed = calls_allowed
        self._npc_id = npc_id
        self._decoder = SSEDecoder()
        self.said: list[str] = []  # the round's text, for the tool round's assistant message
        self.calls: list[ToolCallPiece] = []  # the round's tool calls, in order
        self._held: deque[Piece] = deque()  # pieces behind a call being answered
        self._queued: deque[bytes] = deque()  # events not parsed yet (behind a call)
        self._ready: ToolCallPiece | None = None  # a call for `next_call()` to return
        self._paused = False  # a call is out: nothing is handed over until `resume()`
        self._replied = False  # [DONE] or the body's end: the reply is complete
        self._done = False  # the reply was handed over whole
        self._over = False  # the body ended (or the wait for its end was given up)
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._timer_at = math.inf  # when the timer fires
        self._when = limits.next_wait(started=False)
        self._said_append = self.said.append
        # Armed no later than an idle wait from now, so that the first token's idle
        # wait (never earlier) does not pull the timer in: a timer that fires before
        # `_when` only re-arms at it.
        self._timer_at = min(self._when, self._loop.time() + limits.idle_s)
        self._handle = self._loop.call_at(self._timer_at, self._fire)
        body.listen(self._notify, self._offered)
        self._notify()  # the body bytes that came with the head

    async def next_call(self) -> ToolCallPiece | None:
        """The next tool call to answer, then `resume()`; None once the body is over.

        Raises the round's `GenerationError` (or a fault of `take`)."""
        while True:
            if self._error is not None:
                raise self._error
            if self._ready is not None:
                call, self._ready = self._ready, None
                return call
            if self._done and self._over:
                return None
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def resume(self) -> None:
        """The call is answered: hand over what waited behind it, and read on."""
        self._paused = False
        self._when = self._limits.next_wait(self._assembler.started)
        self._schedule()
        self._guarded(self._hand_over_and_read)

    def close(self) -> None:
        """Stop listening and drop the timer (the round is over or abandoned)."""
        self._body.listen(None)
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._timer_at = math.inf

    # In the body's callbacks

    def _notify(self) -> None:
        if self._paused or self._over or self._error is not None:
            return
        self._guarded(self._read)

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run `step`; a failure ends the round for `next_call()` to raise (never the callback)."""
        try:
            step()
        except Exception as exc:  # GenerationError, or a fault past the parser (`take`)
            self._error = exc
            self.close()
            self._wake()

    def _hand_over_and_read(self) -> None:
        self._hand_over()
        if not self._paused:
            self._read()

    def _offered(self, data: bytes) -> bool:
        """The body's sink: bytes as they arrive, none buffered before them (as `_read`
        would read them); False leaves them buffered (a call is out, or the round is over)."""
        if self._paused or self._over or self._error is not None:
            return False
        try:
            self._data(data)
        except Exception as exc:  # as `_guarded`
            self._error = exc
            self.close()
            self._wake()
        return True

    def _read(self) -> None:
        body = self._body
        while True:
            try:
                data = body.read_nowait()
            except BodyCut:
                if not self._replied:
                    raise GenerationError(CUT) from None
                data = None  # after the reply: not reusable, which closing handles
            if data is None:
                self._body_ended()
                return
            if not data:
                return
            self._data(data)
            if self._paused:
                return

    def _data(self, data: bytes) -> None:
        """One read of the body: its events, handed over; the idle wait restarted."""
        if self._replied:
            return  # after [DONE]: read and dropped
        try:
            events = self._decoder.feed(data)
        except EventTooLarge:
            raise GenerationError(MALFORMED) from None
        if not events:
            return
        if self._held or self._queued:
            self._queued.extend(events)
            self._hand_over()
        else:  # `_hand_over` with nothing waiting: text pieces go at once, in order
            parse, said, take = self._parse, self._said_append, self._take
            for i, event in enumerate(events):
                if not event.startswith(b"[DONE]"):
                    pieces = parse(event)
                    if len(pieces) == 1 and type(piece := pieces[0]) is TextPiece:
                        said(piece.text)
                        take(piece)
                        continue
                    self._held.extend(pieces)
                    i += 1
                self._queued.extend(events[i:] if i else events)
                self._hand_over()
                break
        if self._paused or self._replied:
            return
        self._when = when = self._limits.next_wait(self._assembler.started)
        if when < self._timer_at:  # the idle wait is shorter than the first
            self._schedule()

    def _hand_over(self) -> None:
        """Pieces and events in order until a call pauses them; the end of the reply."""
        held, queued = self._held, self._queued
        while not self._paused:
            if held:
                self._piece(held.popleft())
            elif queued:
                event = queued.popleft()
                if event.startswith(b"[DONE]"):
                    queued.clear()
                    self._end_reply()
                else:
                    held.extend(self._parse(event))
            else:
                break
        if self._replied and not self._paused and not self._done:
            self._reply_done()

    def _piece(self, piece: Piece) -> None:
        if isinstance(piece, TextPiece):
            self.said.append(piece.text)
            self._take(piece)
        elif isinstance(piece, ToolCallPiece):
            if not self._calls_allowed:
                log.warning(PAST_LAST_ROUND, self._npc_id)
                return
            self.calls.append(piece)
            self._ready = piece
            self._paused = True
            self._wake()
        else:
            self._take(piece)

    def _end_reply(self) -> None:
        self._replied = True
        self._held.extend(self._assembler.end())

    def _reply_done(self) -> None:
        """Every piece is handed over: the turn may end; the body's end is awaited briefly."""
        self._done = True
        if not self.calls:
            self._on_last()
        self._when = min(self._limits.total_at, self._loop.time() + DRAIN_S)
        if not self._body.complete:  # else the end is read in this same callback: no wait
            self._schedule()
        self._wake()

    def _body_ended(self) -> None:
        if not self._replied:
            self._end_reply()
            self._hand_over()
        self._over = True
        self._wake()

    # The limits: one lazily re-armed timer

    def _schedule(self) -> None:
        """Have the timer fire by `_when` (a later deadline is seen when it fires)."""
        handle = self._handle
        if handle is not None:
            if self._timer_at <= self._when:
                return
            handle.cancel()
        self._timer_at = self._when
        self._handle = self._loop.call_at(self._when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._timer_at = math.inf
        if self._over or self._paused or self._error is not None:
            return  # nothing waits (a call is out: `resume()` schedules again)
        if self._loop.time() < self._when:
            self._schedule()
            return
        if self._done:
            self._over = True  # the body's end did not come: the connection is not reused
            self._wake()
            return
        self._error = self._limits.expired(self._when)
        self.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
