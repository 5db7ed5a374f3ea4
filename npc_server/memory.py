"""Bounded conversation memory: what an NPC remembers of one audience."""

from __future__ import annotations

from collections import deque

from npc_server.backends.base import MemoryEntry


class ConversationMemory:
    """Lines of a conversation, oldest dropped first past `max_chars`."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self._lines: deque[MemoryEntry] = deque()
        self._chars = 0

    def add(self, entry: MemoryEntry) -> None:
        """Remember a line; empty lines (a turn cut before any text) are skipped."""
        if not entry.text:
            return
        self._lines.append(entry)
        self._chars += len(entry.text)
        while self._chars > self.max_chars and len(self._lines) > 1:
            self._chars -= len(self._lines.popleft().text)

    def lines(self) -> tuple[MemoryEntry, ...]:
        return tuple(self._lines)

    @property
    def chars(self) -> int:
        return self._chars

    def __len__(self) -> int:
        return len(self._lines)
