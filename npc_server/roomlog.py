"""A room's log for its watchers: every frame a member sees, numbered, the last N kept.

A `RoomLog` subscribes to the room's channel in the broker like a member's
session, so it gets presence, `said`, `typing`, turns, deltas and actions,
from this node or (with a cluster broker) any other. It gives each frame the
next number of the room's sequence, encodes it once as an SSE event and keeps
the last `max_events` of them. Watchers never hold frames of their own: each
keeps a cursor (the last number it was handed) and reads what follows, so a
frame costs one encoding however many watch, and a reconnect with
`Last-Event-ID` replays from the same log, exactly once and in order.

A watcher more than `max_lag` events behind is told `overrun` (it is closed,
and comes back with its last id); one whose cursor fell out of the window
gets a reset and a snapshot instead of a replay.

Event ids are `<epoch>-<n>`: the epoch names this log, so an id from before a
restart, from another node or from a log that was forgotten is never taken
for a position in this one.

Deltas are never dropped from the log: an interrupted turn's `turn.end`
says, with `kept`, how much of what watchers saw the NPC keeps.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

from npc_server.brokers import Broker, room_channel
from npc_server.protocol.frames import ServerFrame
from npc_server.transports.sse import frame_event


class LogReader(Protocol):
    """What follows a room log: a watcher's stream."""

    cursor: int

    def wake_nowait(self) -> None:
        """There is something after the cursor."""

    def overrun(self) -> None:
        """The reader fell more than `max_lag` events behind."""


@dataclass(frozen=True, slots=True)
class RoomLogStatistics:
    rooms: int
    readers: int
    events: int
    bytes: int


class RoomLog:
    """The numbered, bounded event log of one room on this node."""

    # As a broker subscriber it belongs to no player, so no `exclude` skips it.
    player = ""

    def __init__(self, room: str, max_events: int, max_lag: int, epoch: str) -> None:
        self.id = f"watch:{room}"
        self.room = room
        self.epoch = epoch
        self.max_events = max_events
        self.max_lag = max_lag
        self.last_seq = 0
        self.readers: set[LogReader] = set()
        self.idle_since: float | None = None
        self._events: deque[tuple[int, bytes]] = deque()
        self._bytes = 0

    # --- as a broker subscriber -------------------------------------------

    def push_nowait(self, frame: ServerFrame) -> None:
        """Number, encode and keep a frame of the room; wake its readers."""
        self.last_seq = seq = self.last_seq + 1
        data = frame_event(frame, f"{self.epoch}-{seq}")
        self._events.append((seq, data))
        self._bytes += len(data)
        if len(self._events) > self.max_events:
            self._bytes -= len(self._events.popleft()[1])
        behind = seq - self.max_lag
        # Readers' callbacks only set flags: none adds or removes a reader here.
        for reader in self.readers:
            if reader.cursor < behind:
                reader.overrun()
            else:
                reader.wake_nowait()

    def drop_turn_nowait(self, turn: str) -> int:
        return 0  # kept: readers may have had them, and a replay must match (see above)

    # --- readers ------------------------------------------------------------

    def event_id(self, seq: int | None = None) -> str:
        return f"{self.epoch}-{self.last_seq if seq is None else seq}"

    def position_of(self, event_id: str) -> int | None:
        """The sequence number a `Last-Event-ID` names, if a replay from it is complete."""
        epoch, _, number = event_id.strip().rpartition("-")
        # isdigit alone admits ² and other digits int() refuses
        if epoch != self.epoch or not (number.isascii() and number.isdigit()) or len(number) > 18:
            return None
        seq = int(number)
        first = self._events[0][0] if self._events else self.last_seq + 1
        return seq if first - 1 <= seq <= self.last_seq else None

    def read_after(self, cursor: int) -> bytes | None:
        """The encoded events after `cursor` (b"" if none), or None if some are gone."""
        missing = self.last_seq - cursor
        if missing <= 0:
            return b""
        if missing > len(self._events):
            return None
        # From the right: a reader at the tip costs O(what it reads), not O(window).
        parts = list(islice(reversed(self._events), missing))
        parts.reverse()
        return b"".join(data for _, data in parts)

    def statistics(self) -> tuple[int, int]:
        return len(self._events), self._bytes


class RoomLogs:
    """This node's room logs: made for a room's first watcher, forgotten after `linger` idle."""

    def __init__(
        self,
        broker: Broker,
        *,
        max_events: int,
        max_lag: int,
        linger: float,
        clock: Callable[[], float],
    ) -> None:
        self.broker = broker
        self.max_events = max_events
        self.max_lag = min(max_lag, max_events)
        self.linger = linger
        self.clock = clock
        self._logs: dict[str, RoomLog] = {}

    def get(self, room: str) -> RoomLog | None:
        return self._logs.get(room)

    def open(self, room: str) -> RoomLog:
        """The room's log, subscribed to its channel (made on first use)."""
        log = self._logs.get(room)
        if log is None:
            log = RoomLog(room, self.max_events, self.max_lag, secrets.token_hex(4))
            self._logs[room] = log
            self.broker.subscribe(room_channel(room), log)
        return log

    def add_reader(self, log: RoomLog, reader: LogReader) -> None:
        log.readers.add(reader)
        log.idle_since = None

    def remove_reader(self, log: RoomLog, reader: LogReader) -> None:
        log.readers.discard(reader)
        if not log.readers:
            log.idle_since = self.clock()

    def sweep_nowait(self) -> int:
        """Forget logs nobody has read for `linger` seconds; returns how many."""
        now = self.clock()
        stale = [
            log
            for log in self._logs.values()
            if log.idle_since is not None and now - log.idle_since >= self.linger
        ]
        for log in stale:
            self.broker.unsubscribe(room_channel(log.room), log)
            del self._logs[log.room]
        return len(stale)

    def statistics(self) -> RoomLogStatistics:
        events = [log.statistics() for log in self._logs.values()]
        return RoomLogStatistics(
            rooms=len(self._logs),
            readers=sum(len(log.readers) for log in self._logs.values()),
            events=sum(n for n, _ in events),
            bytes=sum(b for _, b in events),
        )
