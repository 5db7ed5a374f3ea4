"""Memory in the process: what one server keeps of each audience between conversations.

Without Redis (one process) an NPC still remembers a player who reconnects:
a conversation is forgotten when its audience leaves, its lines stay here.
Nothing survives a restart. Bounded two ways: an entry expires `ttl` seconds
after its last save, and past `max_entries` the entry saved longest ago is
dropped first. Rooms are counted apart, against `max_room_entries`: room names
are the clients' choice, so a client hopping through fresh rooms pushes out
other rooms' memories only, never a player's. Each entry is bounded by its
NPC's `memory_chars`, so the whole store holds at most `max_entries +
max_room_entries` x the largest `memory_chars` characters.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from npc_server.backends.base import MemoryEntry
from npc_server.memories.base import Lines, MemoryStatistics, is_room
from npc_server.memory import bounded

MAX_ENTRIES = 10_000
MAX_ROOM_ENTRIES = 5_000


class LocalMemoryStore:
    """A `MemoryStore` in two dicts (players', rooms'), oldest save first: expiry and the
    caps drop from the front."""

    def __init__(
        self,
        ttl: float,
        *,
        max_entries: int = MAX_ENTRIES,
        max_room_entries: int = MAX_ROOM_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self._caps = {False: max_entries, True: max_room_entries}
        self._clock = clock
        self._shelves: dict[bool, OrderedDict[tuple[str, str], tuple[float, Lines]]] = {
            False: OrderedDict(),
            True: OrderedDict(),
        }
        self._loads = self._saves = 0

    async def load(self, npc_id: str, audience_key: str) -> Lines | None:
        self._loads += 1
        self._expire()
        held = self._shelves[is_room(audience_key)].get((npc_id, audience_key))
        return () if held is None else held[1]

    def save_nowait(self, npc_id: str, audience_key: str, lines: Lines) -> None:
        self._saves += 1
        room = is_room(audience_key)
        shelf, key = self._shelves[room], (npc_id, audience_key)
        shelf[key] = (self._clock() + self.ttl, lines)
        shelf.move_to_end(key)
        self._expire()
        while len(shelf) > self._caps[room]:
            shelf.popitem(last=False)

    async def append(
        self, npc_id: str, audience_key: str, entries: Sequence[MemoryEntry], max_chars: int
    ) -> bool:
        stored = await self.load(npc_id, audience_key) or ()
        self.save_nowait(npc_id, audience_key, bounded((*stored, *entries), max_chars))
        return True

    def _expire(self) -> None:
        now = self._clock()
        for shelf in self._shelves.values():
            while shelf:
                expires, _ = next(iter(shelf.values()))
                if expires > now:
                    break
                shelf.popitem(last=False)

    async def flush(self) -> None:
        """Nothing to wait for: a save is done when it returns."""

    def statistics(self) -> MemoryStatistics:
        entries = sum(len(shelf) for shelf in self._shelves.values())
        return MemoryStatistics(entries, 0, self._loads, self._saves, self._saves, 0, 0)

    async def aclose(self) -> None:
        for shelf in self._shelves.values():
            shelf.clear()
