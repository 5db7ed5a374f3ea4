"""What the `openai` backend tests share: the NPC, the request, and a collector."""

from __future__ import annotations

from collections.abc import Callable

from npc_server.backends.base import (
    GenerationError,
    GenerationRequest,
    MemoryEntry,
    Piece,
    TextPiece,
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


async def collect(
    backend: OpenAIBackend, request: GenerationRequest = REQUEST
) -> tuple[list[Piece], GenerationError | None]:
    pieces: list[Piece] = []
    try:
        async for piece in backend.generate(request):
            pieces.append(piece)
    except GenerationError as exc:
        return pieces, exc
    return pieces, None


def text_of(pieces: list[Piece]) -> str:
    return "".join(p.text for p in pieces if isinstance(p, TextPiece))
