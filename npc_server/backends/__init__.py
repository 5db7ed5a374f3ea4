"""Generation backends, chosen per NPC by `[backend] kind`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from npc_server.backends.base import (
    ActionPiece,
    Backend,
    GenerationError,
    GenerationRequest,
    MemoryEntry,
    Piece,
    TextPiece,
    UsagePiece,
)
from npc_server.npcs import NpcConfig

__all__ = [
    "ActionPiece",
    "Backend",
    "GenerationError",
    "GenerationRequest",
    "MemoryEntry",
    "Piece",
    "TextPiece",
    "UsagePiece",
    "create_backend",
]

BACKEND_KINDS = ("scripted", "openai")


def create_backend(
    npc: NpcConfig,
    defaults: Mapping[str, Mapping[str, Any]] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Backend:
    """Build the backend for one NPC.

    Settings are layered: server-wide defaults for the kind, then the NPC's
    own `[backend]` table, then server-wide overrides (e.g. zero pacing for
    benchmarks).
    """
    kind = npc.backend
    settings: dict[str, Any] = {}
    settings.update((defaults or {}).get(kind, {}))
    settings.update(npc.backend_settings)
    settings.update((overrides or {}).get(kind, {}))
    if kind == "scripted":
        from npc_server.backends.scripted import ScriptedBackend

        return ScriptedBackend(npc, settings)
    if kind == "openai":
        from npc_server.backends.openai import OpenAIBackend

        return OpenAIBackend(npc, settings)
    raise ValueError(
        f"NPC {npc.id!r}: unknown backend kind {kind!r}; expected one of {BACKEND_KINDS}"
    )
