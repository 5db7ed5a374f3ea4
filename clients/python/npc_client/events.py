"""Room and server events, and the bounded inbox that buffers them for iterators."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from npc_client.errors import NpcError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Said:
    """Another player in `room` said `text` to `npc`."""

    room: str
    player: str
    npc: str
    text: str


@dataclass(frozen=True, slots=True)
class Typing:
    """Another player started (`on`) or stopped typing."""

    player: str
    on: bool
    room: str | None = None
    npc: str | None = None


@dataclass(frozen=True, slots=True)
class Presence:
    """A player `joined` or `left` a room."""

    room: str
    player: str
    state: str


@dataclass(frozen=True, slots=True)
class Members:
    """Who is in `room`, after this client joined it (`presence` events are the changes
    after it); `partial`: in a cluster, a server did not answer in time."""

    room: str
    members: tuple[str, ...]
    partial: bool = False


@dataclass(frozen=True, slots=True)
class Draining:
    """The server is going down; the client resumes elsewhere after `retry_after` s."""

    retry_after: float


@dataclass(frozen=True, slots=True)
class RoomGap:
    """Cluster mode: what other servers published in `room` (`said`, `typing`,
    `presence`) may not all have arrived before this (Redis was away)."""

    room: str


@dataclass(frozen=True, slots=True)
class ServerNotice:
    """An `error` frame that answers no pending request (e.g. `rate_limited`)."""

    error: NpcError


Event = Said | Typing | Presence | Members | RoomGap | Draining | ServerNotice


def event_from_frame(frame: Mapping[str, Any]) -> Event | None:
    """The event for a `said`, `typing`, `presence`, `members`, `room.gap` or `draining`
    frame, else None."""
    t = frame.get("t")
    if t == "said":
        return Said(
            str(frame.get("room")),
            str(frame.get("player")),
            str(frame.get("npc")),
            str(frame.get("text", "")),
        )
    if t == "typing":
        return Typing(
            str(frame.get("player")), bool(frame.get("on")), frame.get("room"), frame.get("npc")
        )
    if t == "presence":
        return Presence(str(frame.get("room")), str(frame.get("player")), str(frame.get("state")))
    if t == "members":
        members = frame.get("members")
        names = tuple(str(m) for m in members) if isinstance(members, list) else ()
        return Members(str(frame.get("room")), names, frame.get("partial") is True)
    if t == "room.gap":
        return RoomGap(str(frame.get("room")))
    if t == "draining":
        retry_after = frame.get("retry_after")
        return Draining(float(retry_after) if isinstance(retry_after, int | float) else 1.0)
    return None


class Inbox(Generic[T]):
    """A bounded buffer read by one async iterator; the oldest items go first when full."""

    def __init__(self, max_items: int = 1024) -> None:
        self._items: deque[T] = deque(maxlen=max_items)
        self._wakeup = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def put_nowait(self, item: T) -> None:
        if self._items.maxlen is not None and len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(item)
        self._wakeup.set()

    def close(self) -> None:
        """No more items will come; the iterator ends once the buffer is empty."""
        self._closed = True
        self._wakeup.set()

    async def __aiter__(self) -> AsyncIterator[T]:
        while True:
            while self._items:
                yield self._items.popleft()
            if self._closed:
                return
            self._wakeup.clear()
            await self._wakeup.wait()
