"""`room.gap` for this node's sockets and watchers of a room: once per gap.

A room's talk from other nodes may be lost: this node's link to Redis was down,
or another node reports publications it could not write (a `gap` message). Its
sockets and watchers here are told with `room.gap{room}` on the room's channel
once the span of the loss is over (the other node's report comes after it; this
node's own outage is over once Redis delivers the room's channel again).

One loss is often reported more than once: in an outage of Redis this node tells
its own, then each other node that lost room talk meanwhile reports it when it is
back. A `room.gap` that would follow another with nothing of the room between them
says nothing the first did not: in what the socket got, the place of anything lost
is the same under either. So after telling a room, a `GapMark` listens on its
channel beside the members; a later report while the mark has seen no frame (and
the room has the same subscribers here) is not told again. Any frame of the room
ends that (a `said` here, a frame from another node, a turn this node ended), and
so does a subscriber coming or going (a new member was not told the first).

Marks are dropped each second once they have seen a frame or are alone on their
channel, so a mark never keeps a room subscribed in Redis for longer than that.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from npc_server.protocol.frames import RoomGap, ServerFrame

if TYPE_CHECKING:
    from npc_server.brokers.redis import RedisBroker

MAX_MARKS = 10_000  # rooms told at once; past it the oldest mark goes (a gap may repeat)


class GapMark:
    """A broker subscriber of a room's channel: whether a frame came since its gap."""

    player = ""  # no player's `exclude` skips it: it sees what any subscriber might

    def __init__(self, channel: str, subscribers: int) -> None:
        self.id = f"gap-mark:{channel}"
        self.channel = channel
        self.subscribers = subscribers  # the others on the channel when the gap was told
        self.crossed = False

    def push_nowait(self, frame: ServerFrame) -> None:
        if type(frame) is not RoomGap:
            self.crossed = True

    def drop_turn_nowait(self, turn: str) -> int:
        return 0  # drops queued deltas: adds nothing between two gaps


@dataclass(frozen=True, slots=True)
class RoomGapStatistics:
    told: int  # rooms told of a gap (once per room, however many sockets)
    merged: int  # reports not told again: nothing of the room came since the last


class RoomGaps:
    """Tells this node's subscribers of rooms' gaps, each gap once."""

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self._marks: dict[str, GapMark] = {}
        self._told = self._merged = 0

    def tell_nowait(self, channels: Iterable[str]) -> None:
        """Room talk on these `room:` channels may be lost up to now: tell each room's
        subscribers here, unless they were told and nothing of the room came since."""
        for channel in channels:
            mark = self._marks.get(channel)
            others = self.broker.subscriber_count(channel) - (mark is not None)
            if mark is not None and not mark.crossed and mark.subscribers == others:
                self._merged += 1
            elif others > 0:
                self.broker.deliver_local_nowait(channel, RoomGap(channel.removeprefix("room:")))
                self._told += 1
                self._mark(channel, others, mark)

    def _mark(self, channel: str, others: int, mark: GapMark | None) -> None:
        if mark is None:
            if len(self._marks) >= MAX_MARKS:
                self._drop(next(iter(self._marks.values())))
            mark = self._marks[channel] = GapMark(channel, others)
            self.broker.subscribe(channel, mark)
        mark.crossed, mark.subscribers = False, others

    def sweep_nowait(self) -> int:
        """Drop the marks that have done their part (a frame came) or have nobody to
        speak for (the room's subscribers here left); how many."""
        done = [
            mark
            for mark in self._marks.values()
            if mark.crossed or self.broker.subscriber_count(mark.channel) <= 1
        ]
        for mark in done:
            self._drop(mark)
        return len(done)

    def _drop(self, mark: GapMark) -> None:
        del self._marks[mark.channel]
        self.broker.unsubscribe(mark.channel, mark)

    def close_nowait(self) -> None:
        for mark in list(self._marks.values()):
            self._drop(mark)

    def statistics(self) -> RoomGapStatistics:
        return RoomGapStatistics(self._told, self._merged)
