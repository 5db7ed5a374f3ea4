"""Game state: what players send with `context`, and what the game server says.

Both bounded, each with one owner. The game server's (trusted) layer wins over
the client's, and prompts show which is which.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ALL_NPCS = "*"


class ContextStore:
    """Per player: one data map for every NPC (`*`) and one per NPC, within a byte budget."""

    def __init__(self, max_bytes_per_player: int) -> None:
        self.max_bytes_per_player = max_bytes_per_player
        self._data: dict[str, dict[str, tuple[Mapping[str, Any], int]]] = {}
        # What the game server says (POST /api/context): a layer of its own.
        self.trusted = TrustedContexts(max_bytes_per_player)

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

    def forget(self, player: str, *, trusted: bool = True) -> None:
        """The player's last session ended: its contexts go, and the game's trusted one
        unless `trusted` is False (a cluster keeps every node's copy current instead:
        a conversation of theirs may go on here, or a say come here for them)."""
        self._data.pop(player, None)
        if trusted:
            self.trusted.forget(f"player:{player}")

    def __len__(self) -> int:
        return len(self._data)

    def scopes_of(self, player: str) -> dict[str, Mapping[str, Any]]:
        """A player's contexts by scope (`*` or an NPC id), to hand over to another node."""
        return {scope: data for scope, (data, _) in self._data.get(player, {}).items()}


class TrustedContexts:
    """Game state the game server posted (`POST /api/context`): wins over the client's.

    Kept per player and per room, each scope all-NPC (`*`) or per NPC, within the
    same byte budget per scope as a player's own contexts; at most `max_scopes`
    players and rooms are held, the least recently set forgotten first.
    """

    def __init__(self, max_bytes_per_scope: int, max_scopes: int = 10_000) -> None:
        self.max_bytes_per_scope = max_bytes_per_scope
        self.max_scopes = max_scopes
        self._data: dict[str, dict[str, tuple[Mapping[str, Any], int]]] = {}

    def fits(self, scope: str, npc: str | None, size: int) -> bool:
        """Whether `size` bytes for `npc` would stay within the scope's budget."""
        key = ALL_NPCS if npc is None else npc
        scopes = self._data.get(scope, {})
        return sum(n for k, (_, n) in scopes.items() if k != key) + size <= self.max_bytes_per_scope

    def set_nowait(self, scope: str, npc: str | None, data: Mapping[str, Any], size: int) -> bool:
        """Replace the trusted context of `scope` (`player:<id>` or `room:<id>`) for `npc`."""
        if not self.fits(scope, npc, size):
            return False
        scopes = self._data.pop(scope, {})
        key = ALL_NPCS if npc is None else npc
        scopes[key] = (dict(data), size)
        self._data[scope] = scopes  # newest last: the oldest scope goes first
        while len(self._data) > self.max_scopes:
            del self._data[next(iter(self._data))]
        return True

    def for_npc(self, player: str, room: str | None, npc: str) -> dict[str, Any]:
        """The room's trusted state, then the player's over it; per-NPC maps over all-NPC ones."""
        merged: dict[str, Any] = {}
        for scope in (*((f"room:{room}",) if room is not None else ()), f"player:{player}"):
            scopes = self._data.get(scope, {})
            merged.update(scopes.get(ALL_NPCS, ({}, 0))[0])
            merged.update(scopes.get(npc, ({}, 0))[0])
        return merged

    def forget(self, scope: str) -> None:
        self._data.pop(scope, None)

    def __len__(self) -> int:
        return len(self._data)
