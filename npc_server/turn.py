"""What a turn is, and what a conversation depends on.

The words of `turns.py`: who hears a conversation (`Audience`), a `Turn` and
its actions, how a turn ends, and the small protocols a `Conversation` is
given in its constructor (where frames go, where turns are indexed, tokens
metered, timers scheduled, tools asked).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from npc_server.backends.base import GenerationRequest, MemoryEntry, ToolCallPiece
from npc_server.brokers.base import player_channel, room_channel
from npc_server.protocol.codes import ErrorCode
from npc_server.protocol.frames import RequestId, ServerFrame

if TYPE_CHECKING:
    from npc_server.turns import Conversation


@dataclass(frozen=True, slots=True)
class Audience:
    """Who sees a conversation: one player, or every member of a room."""

    player: str | None = None
    room: str | None = None

    @property
    def key(self) -> str:
        """The audience's channel in the broker."""
        if self.room is not None:
            return room_channel(self.room)
        assert self.player is not None
        return player_channel(self.player)

    @classmethod
    def from_key(cls, key: str) -> Audience | None:
        """The audience whose `key` this is (`player:<id>` or `room:<id>`), else None."""
        kind, _, name = key.partition(":")
        if not name:
            return None
        if kind == "room":
            return cls(room=name)
        return cls(player=name) if kind == "player" else None


class Publisher(Protocol):
    """How frames reach sockets: the broker's publishing half."""

    def publish_nowait(
        self, channel: str, frame: ServerFrame, exclude: str | None = None
    ) -> None: ...

    def drop_turn_nowait(self, channel: str, turn: str) -> None: ...


class TurnIndex(Protocol):
    """Where a conversation reports its turns and actions (the node's registry)."""

    def turn_added(self, conversation: Conversation, turn: Turn) -> None: ...

    def turn_ended(self, turn: Turn) -> None: ...

    def action_opened(self, conversation: Conversation, turn: Turn, action: TurnAction) -> None: ...

    def action_resolved(self, action: TurnAction) -> None: ...


class NoIndex:
    """A `TurnIndex` that keeps nothing (a conversation on its own, in tests)."""

    def turn_added(self, conversation: Conversation, turn: Turn) -> None:
        return None

    def turn_ended(self, turn: Turn) -> None:
        return None

    def action_opened(self, conversation: Conversation, turn: Turn, action: TurnAction) -> None:
        return None

    def action_resolved(self, action: TurnAction) -> None:
        return None


class TokenMeter(Protocol):
    """Counts generated tokens per player (a budget); see `admission.TokenBudget`."""

    def spend_nowait(self, player: str, tokens: int) -> None: ...


class Timer(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...


class GenerationLimiter:
    """A server-wide cap on concurrent generations; never waits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def try_acquire_nowait(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1


class TurnState(Enum):
    QUEUED = "queued"
    ACTIVE = "active"
    ENDED = "ended"


class EndReason(StrEnum):
    DONE = "done"
    INTERRUPTED = "interrupted"
    SUPERSEDED = "superseded"
    ERROR = "error"
    TIMEOUT = "timeout"


@dataclass(slots=True)
class TurnAction:
    id: str
    name: str
    args: Mapping[str, Any]
    at: int
    approval: bool
    timeout_s: float
    status: str | None = None
    timer: Timer | None = None


@dataclass(slots=True)
class Turn:
    id: str
    npc: str
    player: str
    text_in: str
    room: str | None
    reply_to: RequestId
    state: TurnState = TurnState.QUEUED
    parts: list[str] = field(default_factory=list)
    chars: int = 0
    written: int = 0
    shown: int | None = None
    kept: int | None = None
    actions: list[TurnAction] = field(default_factory=list)
    usage: dict[str, int] | None = None
    task: asyncio.Task[None] | None = None
    started_at: float | None = None
    first_delta_at: float | None = None
    interrupted_at: float | None = None
    # "game" for a turn the game server caused (no player utterance), and its event.
    caused_by: str | None = None
    event: str | None = None
    # The tool call the reply waits for (npc_server.tools), if any.
    pending_call: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def speaker_is(self, player: str) -> bool:
        """Whether `player` may act as this turn's speaker (answer its actions, cut it
        where only the speaker may): the one who spoke, or anyone when no one did (a
        room turn the game caused has player "")."""
        return self.player in ("", player)

    def note_written(self, end: int) -> None:
        """A socket was handed the text up to character `end`."""
        if end > self.written:  # not max(): this runs for every delta written
            self.written = end


class Refused(Exception):
    """A request is refused with `error{code}` (the socket stays open)."""

    def __init__(self, code: ErrorCode, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Started:
    """What `Conversation.submit` did: the turn, and its place in line if queued."""

    turn: Turn
    queued: int | None


RequestFactory = Callable[[Turn, tuple[MemoryEntry, ...]], GenerationRequest]
GAME = "game"


@dataclass(frozen=True, slots=True)
class ActionNotice:
    """An action was taken or resolved (`status`): what the game server's webhook gets."""

    status: str
    action: str
    name: str
    args: Mapping[str, Any]
    approval: bool
    at: int
    turn: str
    npc: str
    player: str
    room: str | None
    # Who accepted or declined (`act`); None for the other statuses. In a room turn
    # the game started (`player` ""), any member may answer: this names them.
    answered_by: str | None = None


class ToolAsker(Protocol):
    """Runs one tool call of a turn: frames to the audience, the question, the answer."""

    async def run_call(self, conversation: Conversation, turn: Turn, piece: ToolCallPiece) -> None:
        """Fill in `piece.answer`; cancelled with the turn."""
        ...


def game_line(event: str | None, text: str) -> str:
    """How a game-caused turn's cause reads in the NPC's memory."""
    what = f"[game event: {event}]" if event else "[game event]"
    return f"{what} {text}".strip()
