"""What the `openai` backend tests share: the NPC, the request, and a collector."""

from __future__ import annotations

from collections.abc import Callable

from npc_server.backends.base import (
    GenerationError,
    GenerationRequest,
    MemoryEntry,
    Piece,
    TextPiece,
    ToolCallPiece,
)
from npc_server.backends.openai import OpenAIBackend
from npc_server.npcs import ActionSpec, NpcConfig

MS = 0.001  # all waits are multiples of this unit
SECRET = "sk-test-5ecret-never-shown"

GIVE_PARAMS = {"type": "object", "properties": {"item": {"type": "string"}}}
NPC = NpcConfig(
    id="mira",
    name="Mira the Merchant",
    persona="A shrewd but warm merchant.",
    actions=(
        ActionSpec("open_shop", "Open the shop window", approval=True),
        ActionSpec("give_item", "Hand the player an item", parameters=GIVE_PARAMS),
    ),
    backend="openai",
)
REQUEST = GenerationRequest(
    npc=NPC,
    player="p1",
    text="What do you sell?",
    history=(MemoryEntry("player", "p1", "Hi!"), MemoryEntry("npc", "mira", "Welcome!")),
)

MakeBackend = Callable[..., OpenAIBackend]


class Reading:
    """How `collect` reads a turn: "generate" (a task step per piece) or "deliver"
    (pieces handed over in the connection's callbacks). The `reading` fixture
    runs a test module each way."""

    mode = "generate"


OnCall = Callable[[ToolCallPiece, list[Piece]], None]


def _unanswered(call: ToolCallPiece, before: list[Piece]) -> None:
    """The default answer: none (the call keeps its "error" answer)."""


async def collect(
    backend: OpenAIBackend, request: GenerationRequest = REQUEST, on_call: OnCall = _unanswered
) -> tuple[list[Piece], GenerationError | None]:
    """The turn's pieces in order (tool calls among them), and its error if it failed.

    `on_call(call, pieces)` answers each tool call; `pieces` are those handed over
    before it."""
    if Reading.mode == "deliver":
        return await _delivered(backend, request, on_call)
    pieces: list[Piece] = []
    try:
        async for piece in backend.generate(request):
            if isinstance(piece, ToolCallPiece):
                on_call(piece, list(pieces))
            pieces.append(piece)
    except GenerationError as exc:
        return pieces, exc
    return pieces, None


async def _delivered(
    backend: OpenAIBackend, request: GenerationRequest, on_call: OnCall
) -> tuple[list[Piece], GenerationError | None]:
    """As `collect`, through `deliver`: `finished()` must come once, after the last piece,
    and only for a turn that did not fail."""
    pieces: list[Piece] = []
    finished_after: list[int] = []

    def take(piece: Piece) -> None:
        assert not finished_after, f"{piece!r} was handed over after finished()"
        pieces.append(piece)

    try:
        async for call in backend.deliver(
            request, take, lambda: finished_after.append(len(pieces))
        ):
            assert not finished_after, "a tool call after finished()"
            on_call(call, list(pieces))
            pieces.append(call)
    except GenerationError as exc:
        assert not finished_after, "finished() in a turn that failed"
        return pieces, exc
    assert finished_after == [len(pieces)], "finished() not called once, after the last piece"
    return pieces, None


def text_of(pieces: list[Piece]) -> str:
    return "".join(p.text for p in pieces if isinstance(p, TextPiece))
