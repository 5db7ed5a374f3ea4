"""The bounded outgoing queue of one session: merges, replaces, drops.

Producers call `push_nowait()` and never wait. The queue keeps every frame it
is given (text is never lost) and reports `PushResult.OVERFLOW` once it holds
more than its bounds; the owner then closes the socket with 4000 and keeps
the session resumable.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

from npc_server.protocol.frames import Delta, Presence, ServerFrame, TypingNotice

FRAME_OVERHEAD_BYTES = 48


class PushResult(Enum):
    QUEUED = "queued"
    MERGED = "merged"
    REPLACED = "replaced"
    OVERFLOW = "overflow"


@dataclass(frozen=True, slots=True)
class QueueStatistics:
    depth: int
    bytes: int
    pushed: int
    popped: int
    merged: int
    replaced: int
    dropped: int
    peak_depth: int
    peak_bytes: int


class _Entry:
    """A queued frame; deltas keep their text as parts so merging is O(1)."""

    __slots__ = ("alive", "frame", "parts", "size", "turn")

    def __init__(self, frame: ServerFrame, size: int) -> None:
        self.frame = frame
        self.size = size
        self.alive = True
        if type(frame) is Delta:
            self.turn: str | None = frame.turn
            self.parts: list[str] | None = [frame.text]
        else:
            self.turn = None
            self.parts = None

    def materialize(self) -> ServerFrame:
        if self.parts is None or len(self.parts) == 1:
            return self.frame
        assert isinstance(self.frame, Delta)
        return Delta(turn=self.frame.turn, text="".join(self.parts), at=self.frame.at)


_QUEUED, _MERGED = PushResult.QUEUED, PushResult.MERGED


def text_bytes(text: str) -> int:
    """UTF-8 size of `text`, without encoding it when it is ASCII (O(1) check)."""
    return len(text) if text.isascii() else len(text.encode())


def estimate_size(frame: ServerFrame) -> int:
    """Approximate encoded size; exact for the text, fixed overhead for the rest."""
    if isinstance(frame, Delta):
        return FRAME_OVERHEAD_BYTES + text_bytes(frame.text)
    return 4 * FRAME_OVERHEAD_BYTES


_Key = tuple[str, str | None, str | None, str | None]


def _state_key(frame: ServerFrame) -> _Key | None:
    """The key of a frame that only states what is now (who is typing, who is in a
    room): a later one of the same key replaces the queued one. None: kept."""
    if isinstance(frame, TypingNotice):
        return ("typing", frame.player, frame.room, frame.npc)
    if isinstance(frame, Presence):
        return ("presence", frame.player, frame.room, None)
    return None


class OutboundQueue:
    """FIFO of server frames bounded by `max_frames` and `max_bytes`."""

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._entries: deque[_Entry] = deque()
        self._open_delta: dict[str, _Entry] = {}
        self._states: dict[_Key, _Entry] = {}  # the queued typing and presence frames
        self._depth = 0
        self._bytes = 0
        # Frames other than deltas: while one waits, pacing holds nothing back.
        self._urgent = 0
        self._pushed = self._popped = self._merged = self._replaced = self._dropped = 0
        self._peak_depth = self._peak_bytes = 0

    def __len__(self) -> int:
        return self._depth

    def sequenced(self) -> int:
        """How many of the queued frames will take a seq when written (not pings)."""
        return sum(1 for entry in self._entries if entry.alive and entry.frame.SEQ)

    @property
    def urgent(self) -> bool:
        """Whether a frame other than a delta is queued (pacing must not delay it)."""
        return self._urgent > 0

    @property
    def over_limit(self) -> bool:
        return self._depth > self.max_frames or self._bytes > self.max_bytes

    def push_nowait(self, frame: ServerFrame) -> PushResult:
        """Queue a frame, merging or replacing where the protocol allows."""
        self._pushed += 1
        if type(frame) is Delta:
            # The push of every token: the delta's merge inlined.
            text = frame.text
            size = text_bytes(text)
            entry = self._open_delta.get(frame.turn)
            if entry is not None and entry.parts is not None:
                entry.parts.append(text)
                entry.size += size
                self._bytes += size
                self._merged += 1
                result = _MERGED
            else:
                entry = _Entry(frame, FRAME_OVERHEAD_BYTES + size)
                self._append(entry)
                self._open_delta[frame.turn] = entry
                result = _QUEUED
        elif (key := _state_key(frame)) is not None:
            result = self._push_state(key, frame)
        else:
            self._close_delta_of(frame)
            self._append(_Entry(frame, estimate_size(frame)))
            result = _QUEUED
        depth, size = self._depth, self._bytes
        if depth > self._peak_depth:
            self._peak_depth = depth
        if size > self._peak_bytes:
            self._peak_bytes = size
        if depth > self.max_frames or size > self.max_bytes:
            return PushResult.OVERFLOW
        return result

    def _close_delta_of(self, frame: ServerFrame) -> None:
        # A later delta must not jump ahead of this frame of the same turn.
        turn = getattr(frame, "turn", None)
        if turn is not None:
            self._open_delta.pop(turn, None)

    def _push_state(self, key: _Key, frame: ServerFrame) -> PushResult:
        entry = self._states.get(key)
        if entry is not None and entry.alive:
            self._replaced += 1
            if key[0] == "typing":  # in place: typing orders nothing else
                entry.frame = frame
                return PushResult.REPLACED
            # A presence moves to the end: a member's `left` must not come before what
            # they said after their `joined`. The old entry stays dead in the deque.
            self._forget(entry)
            self._append_state(key, frame)
            self._compact()
            return PushResult.REPLACED
        self._append_state(key, frame)
        return PushResult.QUEUED

    def _append_state(self, key: _Key, frame: ServerFrame) -> None:
        entry = _Entry(frame, estimate_size(frame))
        self._append(entry)
        self._states[key] = entry

    def _compact(self) -> None:
        # Dead entries (replaced presence) past the live ones are dropped from the deque,
        # so a member flapping at a reader that never drains costs no memory per flap.
        if len(self._entries) > 2 * self._depth + 64:
            self._entries = deque(entry for entry in self._entries if entry.alive)

    def _append(self, entry: _Entry) -> None:
        self._entries.append(entry)
        self._depth += 1
        self._bytes += entry.size
        if entry.parts is None:
            self._urgent += 1

    def pop_nowait(self) -> ServerFrame | None:
        """The next frame to write, or None when the queue is empty."""
        while self._entries:
            entry = self._entries.popleft()
            if not entry.alive:
                continue
            self._forget(entry)
            self._popped += 1
            return entry.materialize()
        return None

    def pop_all_nowait(self) -> list[ServerFrame]:
        """Every queued frame, in order (one call per writer wake-up)."""
        frames: list[ServerFrame] = []
        for entry in self._entries:  # a loop, not a comprehension: usually one entry
            if entry.alive:
                parts = entry.parts
                frames.append(
                    entry.frame if parts is None or len(parts) == 1 else entry.materialize()
                )
        # Nothing stays queued, so nothing stays indexed: no per-entry bookkeeping.
        self._entries.clear()
        self._open_delta.clear()
        self._states.clear()
        self._depth = self._bytes = self._urgent = 0
        self._popped += len(frames)
        return frames

    def _forget(self, entry: _Entry) -> None:
        entry.alive = False
        self._depth -= 1
        self._bytes -= entry.size
        if entry.turn is not None:
            if self._open_delta.get(entry.turn) is entry:
                del self._open_delta[entry.turn]
            return
        self._urgent -= 1
        key = _state_key(entry.frame)
        if key is not None and self._states.get(key) is entry:
            del self._states[key]

    def drop_turn_nowait(self, turn: str) -> int:
        """Drop every queued delta of a turn (it was interrupted); returns how many."""
        dropped = 0
        for entry in self._entries:
            if entry.alive and entry.turn == turn:
                self._forget(entry)
                dropped += 1
        self._dropped += dropped
        return dropped

    def clear_nowait(self) -> int:
        """Drop everything (the session is gone); returns how many frames."""
        count = self._depth
        self._entries.clear()
        self._open_delta.clear()
        self._states.clear()
        self._dropped += count
        self._depth = self._bytes = self._urgent = 0
        return count

    def statistics(self) -> QueueStatistics:
        """An immutable snapshot of the queue's counters."""
        return QueueStatistics(
            depth=self._depth,
            bytes=self._bytes,
            pushed=self._pushed,
            popped=self._popped,
            merged=self._merged,
            replaced=self._replaced,
            dropped=self._dropped,
            peak_depth=self._peak_depth,
            peak_bytes=self._peak_bytes,
        )


class QueueTotals:
    """Counters summed over many queues (those of sessions that have ended)."""

    __slots__ = ("dropped", "merged", "pushed", "replaced")

    def __init__(self) -> None:
        self.pushed = self.merged = self.replaced = self.dropped = 0

    def add(self, stats: QueueStatistics) -> None:
        self.pushed += stats.pushed
        self.merged += stats.merged
        self.replaced += stats.replaced
        self.dropped += stats.dropped
