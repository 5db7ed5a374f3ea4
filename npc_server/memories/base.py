"""The memory store: what NPCs remember of each audience, beyond one conversation.

A conversation's memory (`npc_server.memory.ConversationMemory`) lives as long
as the conversation; a store keeps it after the conversation is forgotten (the
audience left) and, on Redis, across restarts and nodes. One value per NPC and
audience key (`player:<id>` or `room:<id>`): the lines, bounded by the NPC's
`memory_chars`, kept `[cluster] memory_ttl` seconds after the last save.

A turn never waits on a store: `save_nowait` only records the latest state, and
the store writes it behind (every save of one loop iteration in one batch; of
several saves of one key, the latest wins). `load` is awaited once per
conversation, before its first request is built, and never hangs or raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from npc_server.backends.base import MemoryEntry
from npc_server.brokers.base import room_channel

Lines = tuple[MemoryEntry, ...]
ROOM_PREFIX = room_channel("")  # a room's audience key starts so


def is_room(audience_key: str) -> bool:
    """Whether an audience key is a room's: its memory is capped apart from players'."""
    return audience_key.startswith(ROOM_PREFIX)


@dataclass(frozen=True, slots=True)
class MemoryStatistics:
    """What a store did: loads answered, saves recorded and written, values refused."""

    entries: int  # held in the process (local); 0 on Redis
    pending: int  # saved, not yet written
    loads: int
    saves: int
    written: int
    failed: int  # loads or writes the store could not do (Redis away)
    rejected: int  # stored values that were not ours, treated as empty
    writes: int = 0  # round trips that wrote saves (each one pipeline)


class MemoryStore(Protocol):
    """Where conversation memory outlives its conversation."""

    async def load(self, npc_id: str, audience_key: str) -> Lines | None:
        """The remembered lines, `()` for a stranger (or a value that is not ours),
        `None` when the store cannot answer now (the caller retries later and must
        not save over what it could not read). Bounded in time; never raises."""
        ...

    def save_nowait(self, npc_id: str, audience_key: str, lines: Lines) -> None:
        """Record `lines` as the memory of (`npc_id`, `audience_key`); written behind."""
        ...

    async def append(
        self, npc_id: str, audience_key: str, entries: Sequence[MemoryEntry], max_chars: int
    ) -> bool:
        """Add `entries` after what is stored, keeping the newest `max_chars` (read,
        modify, write; safe against concurrent writers of the key). Whether it was
        written. For a node that takes over a dead node's turn: a conversation
        already loaded elsewhere does not see the entries, and its next save replaces
        them."""
        ...

    async def flush(self) -> None:
        """Wait until every save recorded so far is written (while Redis is away,
        until it is back: bound it with `asyncio.timeout`)."""
        ...

    def statistics(self) -> MemoryStatistics:
        """An immutable snapshot of what the store did."""
        ...

    async def aclose(self) -> None:
        """Write what is pending (briefly), then release connections."""
        ...
