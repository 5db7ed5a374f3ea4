"""Game state players send with `context`, bounded per player, one owner."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ALL_NPCS = "*"


class ContextStore:
    """Per player: one data map for every NPC (`*`) and one per NPC, within a byte budget."""

    def __init__(self, max_bytes_per_player: int) -> None:
        self.max_bytes_per_player = max_bytes_per_player
        self._data: dict[str, dict[str, tuple[Mapping[str, Any], int]]] = {}

    def set_nowait(self, player: str, npc: str | None, data: Mapping[str, Any], size: int) -> bool:
        """Replace a player's context for `npc` (None: all NPCs); False if over the budget."""
        scopes = self._data.get(player, {})
        scope = ALL_NPCS if npc is None else npc
        others = sum(n for key, (_, n) in scopes.items() if key != scope)
        if others + size > self.max_bytes_per_player:
            return False
        self._data.setdefault(player, {})[scope] = (dict(data), size)
        return True

    def for_npc(self, player: str, npc: str) -> dict[str, Any]:
        """What a prompt sees: the all-NPC map, then the NPC's own keys over it."""
        scopes = self._data.get(player)
        if not scopes:
            return {}
        common = scopes.get(ALL_NPCS, ({}, 0))[0]
        own = scopes.get(npc, ({}, 0))[0]
        return {**common, **own}

    def bytes_of(self, player: str) -> int:
        return sum(n for _, n in self._data.get(player, {}).values())

    def forget(self, player: str) -> None:
        self._data.pop(player, None)

    def __len__(self) -> int:
        return len(self._data)
