"""Game state: what players send with `context`, and what the game server says.

Both bounded, each with one owner. The game server's (trusted) layer wins over
the client's, and prompts show which is which.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

ALL_NPCS = "*"

log = logging.getLogger(__name__)

# At most one warning a minute that a scope in use was forgotten for room.
EVICTED_LIVE_LOG_S = 60.0


class ContextStore:
    """Per player: one data map for every NPC (`*`) and one per NPC, within a byte budget."""

    def __init__(
        self, max_bytes_per_player: int, in_use: Callable[[str], bool] | None = None
    ) -> None:
        self.max_bytes_per_player = max_bytes_per_player
        self._data: dict[str, dict[str, tuple[Mapping[str, Any], int]]] = {}
        # What the game server says (POST /api/context): a layer of its own.
        self.trusted = TrustedContexts(max_bytes_per_player, in_use=in_use)

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
    players and rooms are held. Past that, the oldest scope *not in use* is forgotten
    first (set longest ago; one found in use counts as new again) (`in_use(scope)`: a player with a session here, a room with
    members here), so posts for players who never connect, or for a stream of
    rooms, cannot push out the state of a player who is playing (the client's claim
    would win again). Only when every scope is in use does the oldest go; that is
    counted (`evicted_in_use`) and logged.
    """

    def __init__(
        self,
        max_bytes_per_scope: int,
        max_scopes: int = 10_000,
        in_use: Callable[[str], bool] | None = None,
    ) -> None:
        self.max_bytes_per_scope = max_bytes_per_scope
        self.max_scopes = max_scopes
        self._in_use = in_use
        self._data: dict[str, dict[str, tuple[Mapping[str, Any], int]]] = {}
        self.evicted_in_use = 0
        self._logged_at = -EVICTED_LIVE_LOG_S

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
            self._evict(scope)
        return True

    def _evict(self, keep: str) -> None:
        """Forget the oldest scope not in use (never `keep`, the one just set)."""
        in_use = self._in_use
        if in_use is not None:
            # Scopes found in use go to the newest end as they are passed, so the next
            # eviction starts past them: amortised, not a walk over every player
            # playing (10,000 `in_use` calls a post at the cap).
            data = self._data
            for _ in range(len(data)):
                old = next(iter(data))
                if old != keep and not in_use(old):
                    del data[old]
                    return
                data[old] = data.pop(old)
        oldest = next(iter(self._data))
        del self._data[oldest]
        if in_use is not None:
            self.evicted_in_use += 1
            now = time.monotonic()
            if now - self._logged_at >= EVICTED_LIVE_LOG_S:
                self._logged_at = now
                log.warning(
                    "the game's trusted contexts are at their limit of %d players and "
                    "rooms, all in use: the oldest post is forgotten (%d so far)",
                    self.max_scopes,
                    self.evicted_in_use,
                )

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
