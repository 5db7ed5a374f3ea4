"""Memory in the process: what one server keeps of each audience between conversations.

Without Redis (one process) an NPC still remembers a player who reconnects:
a conversation is forgotten when its audience leaves, its lines stay here.
Nothing survives a restart. Bounded two ways: an entry expires `ttl` seconds
after its last save, and past `max_entries` the entry saved longest ago is
dropped first. Each entry is bounded by its NPC's `memory_chars`, so the whole
store holds at most `max_entries` x the largest `memory_chars` characters.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from npc_server.backends.base import MemoryEntry
from npc_server.memories.base import Lines, MemoryStatistics
from npc_server.memory import bounded

MAX_ENTRIES = 10_000


class LocalMemoryStore:
    """A `MemoryStore` in a dict, oldest save first: expiry and the cap drop from the front."""

    def __init__(
        self,
        ttl: float,
        *,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, Lines]] = OrderedDict()
        self._loads = self._saves = 0

    async def load(self, npc_id: str, audience_key: str) -> Lines | None:
        self._loads += 1
        self._expire()
        held = self._entries.get((npc_id, audience_key))
        return () if held is None else held[1]

    def save_nowait(self, npc_id: str, audience_key: str, lines: Lines) -> None:
        self._saves += 1
        key = (npc_id, audience_key)
        self._entries[key] = (self._clock() + self.ttl, lines)
        self._entries.move_to_end(key)
        self._expire()
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def append(
        self, npc_id: str, audience_key: str, entries: Sequence[MemoryEntry], max_chars: int
    ) -> bool:
        stored = await self.load(npc_id, audience_key) or ()
        self.save_nowait(npc_id, audience_key, bounded((*stored, *entries), max_chars))
        return True

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            expires, _ = next(iter(self._entries.values()))
            if expires > now:
                return
            self._entries.popitem(last=False)

    async def flush(self) -> None:
        """Nothing to wait for: a save is done when it returns."""

    def statistics(self) -> MemoryStatistics:
        entries = len(self._entries)
        return MemoryStatistics(entries, 0, self._loads, self._saves, self._saves, 0, 0)

    async def aclose(self) -> None:
        self._entries.clear()
