"""Handles for NPC turns, actions and tool calls, fed by the client's frame router.

A `Turn` is an async iterator of `Text` pieces and `Action`s in the order the
NPC produced them. It is fed synchronously (`_feed_*`) and never does I/O
itself: consuming text and interrupting go through callbacks to the client.
Text is placed by its character offset `at`, so a piece that arrives twice
(after a resume or in a snapshot) is yielded once, and only its new part.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

END_REASONS = ("done", "interrupted", "superseded", "error", "timeout")
# Client-side reason: the session was replaced and the server no longer knew
# the turn, so its end (and maybe the end of its text) was never seen.
LOST = "lost"
TOOL_END_STATUSES = ("answered", "timeout", "cancelled", "error")


class Text(str):
    """A piece of a turn's text; `at` is its character offset in the turn."""

    at: int

    def __new__(cls, text: str, at: int) -> Text:
        piece = super().__new__(cls, text)
        piece.at = at
        return piece


class _Ends:
    """What ends with a status (`status`: None while open), or fails when the
    connection closes for good first; `wait()` gives the one or raises the other."""

    def __init__(self) -> None:
        self.status: str | None = None
        self._settled = asyncio.Event()
        self._failure: BaseException | None = None

    async def wait(self) -> str:
        """Wait for the final status and return it; raises `ConnectionClosedError` if the
        connection closed for good before it."""
        await self._settled.wait()
        if self._failure is not None:
            raise self._failure
        assert self.status is not None
        return self.status

    def _fail(self, error: BaseException) -> None:
        if self.status is None and self._failure is None:
            self._failure = error
            self._settled.set()


class Action(_Ends):
    """Something the NPC does at character `at` of its turn (emote, open shop …).

    `status` is None while open, then one of `accepted`, `declined`,
    `expired`, `done` or `retracted` (from `action.end`).
    """

    def __init__(
        self,
        frame: Mapping[str, Any],
        answer: Callable[[str, bool], Awaitable[None]],
    ) -> None:
        self.id: str = str(frame["action"])
        self.turn: str = str(frame.get("turn", ""))
        self.name: str = str(frame.get("name", ""))
        args = frame.get("args")
        self.args: dict[str, Any] = dict(args) if isinstance(args, Mapping) else {}
        self.at: int = int(frame.get("at", 0))
        super().__init__()
        self.approval: bool = bool(frame.get("approval", False))
        self._answer = answer

    def __repr__(self) -> str:
        return f"Action({self.name!r}, id={self.id!r}, args={self.args!r}, status={self.status!r})"

    async def accept(self) -> None:
        """Approve this action (it asked for approval); returns after the server's ack."""
        await self._answer(self.id, True)

    async def decline(self) -> None:
        """Refuse this action; returns after the server's ack."""
        await self._answer(self.id, False)

    def _settle(self, status: str) -> None:
        self.status = status
        self._failure = None
        self._settled.set()


class ToolCall(_Ends):
    """The NPC asks a tool mid-reply (a `tool` frame); its reply waits for the answer.

    `answered_by` is "client" (the turn's speaker answers with `answer()`) or
    "game" (the game server answers over HTTP). `for_me` is true when this
    client is the one asked: a client tool in a turn whose speaker is this
    client's player. `status` is None while the call waits, then the status of
    its `tool.end`: `answered`, `timeout`, `cancelled` or `error` (or the
    client-side `lost` when its turn was lost with a replaced session).
    """

    def __init__(
        self,
        frame: Mapping[str, Any],
        *,
        for_me: bool,
        answer: Callable[[ToolCall, Any], Awaitable[None]],
    ) -> None:
        self.id: str = str(frame["call"])
        self.turn: str = str(frame.get("turn", ""))
        self.name: str = str(frame.get("name", ""))
        args = frame.get("args")
        self.args: dict[str, Any] = dict(args) if isinstance(args, Mapping) else {}
        self.answered_by: str = str(frame.get("answered_by", ""))
        super().__init__()
        self.for_me = for_me
        self.answered = False  # this client's answer was acked
        self._answer = answer

    def __repr__(self) -> str:
        return (
            f"ToolCall({self.name!r}, id={self.id!r}, args={self.args!r}, "
            f"answered_by={self.answered_by!r}, status={self.status!r})"
        )

    @property
    def ended(self) -> bool:
        return self.status is not None

    async def answer(self, result: Any) -> None:
        """Answer the call with `result` (msgpack-able, at most 4 levels deep, string map
        keys); returns after the server's ack. Raises `UnknownCall` when the call no
        longer waits for this player's answer (it ended, or asks someone else)."""
        await self._answer(self, result)

    def _settle(self, status: str) -> None:
        if self.status is None:
            self.status = status
            self._settled.set()


class Turn:
    """One NPC turn: iterate it for `Text` and `Action` items until it ends.

    After the end, `reason`, `chars` (characters the server sent) and `kept`
    (characters the NPC remembers) are set. Iteration does not raise when the
    turn failed on the server: it ends, `reason` is "error" and `error` holds
    the `BackendError`. It raises `ConnectionClosedError` only when the
    connection closed for good before the turn ended. One consumer per turn.

    `caused_by` is "game" (and `event` the game's event name, if it gave one)
    for a turn the game server started; such a turn replies to no `say`. The
    tools the NPC asked are in `tool_calls` (they are not yielded).
    """

    def __init__(
        self,
        turn_id: str,
        *,
        mine: bool,
        on_consumed: Callable[[Turn], None],
        interrupt: Callable[[Turn, int], Awaitable[None]],
    ) -> None:
        self.id = turn_id
        self.mine = mine  # started by this client's `say`
        self.npc: str | None = None
        self.player: str | None = None
        self.room: str | None = None
        self.reply_to: str | int | None = None
        # "game" for a turn the game server started (POST /api/say), with its event name
        self.caused_by: str | None = None
        self.event: str | None = None
        self.queued: int | None = None
        self.started = False
        self.reason: str | None = None
        self.chars: int | None = None
        self.kept: int | None = None
        self.usage: dict[str, int] | None = None
        self.error: Exception | None = None
        self.actions: list[Action] = []
        self.tool_calls: list[ToolCall] = []  # every tool the NPC asked in this turn
        self.reported = 0  # the last `shown` sent in a `seen`
        self._on_consumed = on_consumed
        self._interrupt = interrupt
        self._parts: list[str] = []
        self._received = 0
        self._consumed = 0
        self._early: dict[int, str] = {}
        self._items: deque[Text | Action] = deque()
        self._wakeup = asyncio.Event()
        self._done = asyncio.Event()  # ended, or failed with the connection
        self._stopping = False
        self._failure: BaseException | None = None

    def __repr__(self) -> str:
        return f"Turn({self.id!r}, npc={self.npc!r}, reason={self.reason!r})"

    # --- for callers ------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.reason is not None

    @property
    def consumed(self) -> int:
        """Characters of this turn the caller has taken from the iterator."""
        return self._consumed

    @property
    def received(self) -> int:
        """Characters of this turn the client has received so far."""
        return self._received

    def __aiter__(self) -> Turn:
        return self

    async def __anext__(self) -> Text | Action:
        while not self._items or self._stopping:
            if self._failure is not None:
                raise self._failure
            if self.ended:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        item = self._items.popleft()
        if isinstance(item, Text):
            self._consumed = item.at + len(item)
            self._on_consumed(self)
        return item

    async def text(self) -> str:
        """Consume the rest of the turn and return all text it yielded."""
        async for _ in self:
            pass
        return "".join(self._parts)[: self._consumed]

    async def wait(self) -> None:
        """Wait until the turn ends, without consuming it."""
        await self._done.wait()
        if self._failure is not None:
            raise self._failure

    async def interrupt(self, shown: int | None = None) -> None:
        """Stop the turn. `shown` defaults to the characters consumed so far.

        Nothing more is yielded after this call; the iterator ends when the
        server's `turn.end` arrives. Interrupting an ended turn does nothing.
        """
        if self.ended:
            return
        shown = self._consumed if shown is None else shown
        self._stopping = True  # hides what is buffered, unless the server refuses
        try:
            await self._interrupt(self, shown)
        except BaseException:
            self._stopping = False
            self._wakeup.set()
            raise

    # --- fed by the router ------------------------------------------------

    def _feed_start(self, frame: Mapping[str, Any]) -> None:
        self.started = True
        self.npc = frame.get("npc", self.npc)
        self.player = frame.get("player", self.player)
        self.room = frame.get("room", self.room)
        self.reply_to = frame.get("reply_to", self.reply_to)
        caused_by, event = frame.get("caused_by"), frame.get("event")
        self.caused_by = caused_by if isinstance(caused_by, str) else self.caused_by
        self.event = event if isinstance(event, str) else self.event

    def _feed_text(self, text: str, at: int) -> None:
        if self.ended or at + len(text) <= self._received:
            return  # already have all of it (replayed, or in a snapshot)
        if len(text) > len(self._early.get(at, "")):
            self._early[at] = text
        while self._early:
            first = min(self._early)
            if first > self._received:
                break  # a gap: wait for the text before it
            self._accept(self._early.pop(first), first)

    def _accept(self, text: str, at: int) -> None:
        fresh = text[self._received - at :]
        if not fresh:
            return
        piece = Text(fresh, self._received)
        self._parts.append(fresh)
        self._received += len(fresh)
        self._push(piece)

    def _feed_action(self, action: Action) -> None:
        self.actions.append(action)
        self._push(action)

    def _feed_tool(self, call: ToolCall) -> None:
        self.tool_calls.append(call)

    def _push(self, item: Text | Action) -> None:
        self._items.append(item)
        self._wakeup.set()

    def _feed_end(self, reason: str, chars: int, kept: int | None, usage: Any = None) -> None:
        if self.ended:
            return
        self.reason = reason
        self.chars = chars
        self.kept = kept
        self.usage = dict(usage) if isinstance(usage, Mapping) else None
        self._early.clear()
        self._done.set()
        self._wakeup.set()

    def _fail(self, error: BaseException) -> None:
        if not self.ended and self._failure is None:
            self._failure = error
            self._done.set()
            self._wakeup.set()
