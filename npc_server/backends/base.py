"""The generation backend interface.

A backend turns a `GenerationRequest` into an async iterator of pieces: text
as it is produced, actions anchored where they occur, and usage figures. The
turn runner cancels the consuming task to stop a generation; a backend must
let `CancelledError` through and release what it holds (HTTP streams) in
`finally` blocks or `aclose()` of its generator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from npc_server.npcs import NpcConfig


@dataclass(frozen=True, slots=True)
class TextPiece:
    """Text the NPC says, appended to the turn."""

    text: str


@dataclass(frozen=True, slots=True)
class ActionPiece:
    """An action the NPC takes at the current end of its text."""

    name: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UsagePiece:
    """Token counts reported by the model server, if any."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(slots=True)
class ToolAnswer:
    """What a tool call came back with; the turn runner fills it in.

    `status` is answered, timeout, cancelled or error; `result` the answer's
    value (None unless answered); `content` the result as the model sees it
    (JSON text, cut to `[game] tool_result_chars`).
    """

    status: str = "error"
    result: Any = None
    content: str = '{"error": "no tool runner answered"}'


@dataclass(frozen=True, slots=True)
class ToolCallPiece:
    """The NPC asks one of its `[[tools]]`; the reply pauses until the answer.

    The turn runner sets `answer` before it asks the backend for the next
    piece, so a backend reads `piece.answer` right after its `yield`.
    `call` is the model's own call id (it comes back in the tool message).
    """

    name: str
    args: Mapping[str, Any] = field(default_factory=dict)
    call: str = ""
    answer: ToolAnswer = field(default_factory=ToolAnswer)


Piece = TextPiece | ActionPiece | UsagePiece | ToolCallPiece


@dataclass(frozen=True, slots=True)
class MemoryEntry:
    """One line of a conversation as the NPC remembers it.

    NPC lines hold only the text the player could have seen (cut to `shown`).
    A tool line is a call the NPC made: `speaker` the tool, `args` its JSON
    arguments, `text` the answer as the model saw it, `call` its id.
    """

    role: Literal["player", "npc", "tool"]
    speaker: str
    text: str
    call: str = ""
    args: str = ""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """Everything a backend needs to produce one NPC turn."""

    npc: NpcConfig
    player: str
    text: str
    history: tuple[MemoryEntry, ...] = ()
    context: Mapping[str, Any] = field(default_factory=dict)
    room: str | None = None
    room_members: tuple[str, ...] = ()
    seed: int = 0
    # Game state from the game server (POST /api/context); wins over `context`.
    trusted: Mapping[str, Any] = field(default_factory=dict)
    # "game" when the game server caused the turn (POST /api/say): `text` is then
    # what the game says happened, not a player's words; `event` its name.
    caused_by: str | None = None
    event: str | None = None
    # The first reply of a conversation that began with memory of this audience
    # from an earlier one (a returning player); the history holds what it was.
    returning: bool = False

    @property
    def game_state(self) -> dict[str, Any]:
        """The context a backend should act on: the client's, the game's over it."""
        return {**self.context, **self.trusted}


class GenerationError(Exception):
    """A generation failed; `message` is safe to show to players.

    `reason` becomes `turn.end.reason`: "error" or "timeout".
    """

    def __init__(self, message: str, *, reason: Literal["error", "timeout"] = "error") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


class Backend(Protocol):
    """A source of NPC text. One instance may serve many turns at once."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        """Stream the pieces of one turn; raise `GenerationError` on failure."""
        ...

    async def aclose(self) -> None:
        """Release shared resources (connection pools)."""
        ...


@runtime_checkable
class DeliveringBackend(Backend, Protocol):
    """A backend that can hand a turn's pieces to the turn itself (no task step each)."""

    def deliver(
        self,
        request: GenerationRequest,
        take: Callable[[Piece], None],
        finished: Callable[[], None] | None = None,
    ) -> AsyncIterator[ToolCallPiece]:
        """The pieces of one turn to `take`, `finished()` after the last; tool calls are
        yielded for the caller to answer before the reply goes on."""
        ...
