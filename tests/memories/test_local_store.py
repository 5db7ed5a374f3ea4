"""The in-process memory store's bounds: a TTL after the last save and a cap on entries."""

from __future__ import annotations

from npc_server.memories import LocalMemoryStore
from tests.memories.test_store import said


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_memory_expires_ttl_after_its_last_save() -> None:
    """Saved at t, still there just before t+ttl, gone after; a new save renews it."""
    clock = Clock()
    store = LocalMemoryStore(60.0, clock=clock)
    store.save_nowait("mira", "player:alice", said("hello"))
    clock.now += 59
    assert await store.load("mira", "player:alice") == said("hello")
    store.save_nowait("mira", "player:alice", said("hello", "again"))
    clock.now += 59
    assert await store.load("mira", "player:alice") == said("hello", "again")
    clock.now += 2
    assert await store.load("mira", "player:alice") == ()
    assert store.statistics().entries == 0


async def test_past_the_cap_the_memory_saved_longest_ago_goes_first() -> None:
    """With room for two, a third audience pushes out the one not saved for longest."""
    store = LocalMemoryStore(3600.0, max_entries=2)
    store.save_nowait("mira", "player:a", said("a"))
    store.save_nowait("mira", "player:b", said("b"))
    store.save_nowait("mira", "player:a", said("a", "again"))  # a is now the newest
    store.save_nowait("mira", "player:c", said("c"))
    assert await store.load("mira", "player:b") == ()
    assert await store.load("mira", "player:a") == said("a", "again")
    assert await store.load("mira", "player:c") == said("c")
    assert store.statistics().entries == 2
