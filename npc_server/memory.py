"""Bounded conversation memory: what an NPC remembers of one audience."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from npc_server.backends.base import MemoryEntry


class ConversationMemory:
    """Lines of a conversation, oldest dropped first past `max_chars`.

    The newest line is kept whole even when it alone is longer; `stored()` is
    the memory cut to the bound, for a store. `on_change` runs after each line
    added, so a store can save the new state.
    """

    def __init__(self, max_chars: int, on_change: Callable[[], None] | None = None) -> None:
        self.max_chars = max_chars
        self._lines: deque[MemoryEntry] = deque()
        self._chars = 0
        self._on_change = on_change

    def add(self, entry: MemoryEntry) -> None:
        """Remember a line; empty lines (a turn cut before any text) are skipped."""
        if self._append(entry) and self._on_change is not None:
            self._on_change()

    def restore(self, older: Iterable[MemoryEntry]) -> None:
        """Put lines remembered before this conversation in front of its own (no `on_change`)."""
        mine = tuple(self._lines)
        self._lines.clear()
        self._chars = 0
        for entry in (*older, *mine):
            self._append(entry)

    def _append(self, entry: MemoryEntry) -> bool:
        if not entry.text:
            return False
        self._lines.append(entry)
        self._chars += len(entry.text)
        while self._chars > self.max_chars and len(self._lines) > 1:
            self._chars -= len(self._lines.popleft().text)
        return True

    def lines(self) -> tuple[MemoryEntry, ...]:
        return tuple(self._lines)

    def stored(self) -> tuple[MemoryEntry, ...]:
        """The lines with at most `max_chars` of text in all: a newest line longer
        than that alone keeps its first `max_chars` characters (what was said first)."""
        if self._chars <= self.max_chars:
            return tuple(self._lines)
        [line] = self._lines  # past the bound only when one line is
        text = line.text[: self.max_chars]
        return (MemoryEntry(line.role, line.speaker, text, line.call, line.args),) if text else ()

    @property
    def chars(self) -> int:
        return self._chars

    def __len__(self) -> int:
        return len(self._lines)


def bounded(lines: Iterable[MemoryEntry], max_chars: int) -> tuple[MemoryEntry, ...]:
    """`lines` as a memory of `max_chars` keeps them: the newest that fit."""
    memory = ConversationMemory(max_chars)
    memory.restore(lines)
    return memory.stored()
