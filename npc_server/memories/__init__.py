"""Memory stores: where what an NPC remembers outlives a conversation (`base.MemoryStore`)."""

from __future__ import annotations

from npc_server.memories.base import Lines, MemoryStatistics, MemoryStore
from npc_server.memories.local import LocalMemoryStore

__all__ = ["Lines", "LocalMemoryStore", "MemoryStatistics", "MemoryStore", "create_memory_store"]


def create_memory_store(redis_url: str, ttl: float) -> MemoryStore:
    """In the process for one process; with a Redis URL, shared by every node."""
    if not redis_url:
        return LocalMemoryStore(ttl)
    from npc_server.memories.redis import RedisMemoryStore

    return RedisMemoryStore(redis_url, ttl)
