"""The broker: the one road from whatever makes a frame to the sessions that see it.

Every server frame is published on a channel, and only subscribed sessions
receive it:

- `session:<id>`: one session (answers to its requests, pongs, snapshots);
- `player:<id>`: every session of a player (private turns, backend errors);
- `room:<id>`: every session of every member of a room (presence, turns).

A session subscribes on the node that holds it. The in-memory broker delivers
within the process (one node); a cluster broker also carries publications to
subscribers on other nodes. Publishing never waits: it only enqueues.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from npc_server.protocol.frames import ServerFrame


def session_channel(session_id: str) -> str:
    return f"session:{session_id}"


def player_channel(player: str) -> str:
    return f"player:{player}"


def room_channel(room: str) -> str:
    return f"room:{room}"


class Subscriber(Protocol):
    """What a broker delivers to: a session's outgoing queue."""

    @property
    def id(self) -> str: ...

    @property
    def player(self) -> str: ...

    def push_nowait(self, frame: ServerFrame) -> None: ...

    def drop_turn_nowait(self, turn: str) -> int: ...


@dataclass(frozen=True, slots=True)
class BrokerStatistics:
    channels: int
    subscriptions: int
    published: int


class Broker(Protocol):
    """Channels of frames with local subscribers; every method but `start`/`aclose` is sync."""

    def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        """Deliver what is published on `channel` to `subscriber` (idempotent)."""

    def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        """Stop delivering `channel` to `subscriber` (idempotent)."""

    def publish_nowait(self, channel: str, frame: ServerFrame, exclude: str | None = None) -> None:
        """Queue `frame` for every subscriber of `channel`, except those of player `exclude`."""

    def drop_turn_nowait(self, channel: str, turn: str) -> None:
        """Drop queued deltas of an interrupted `turn` at every subscriber of `channel`."""

    def subscriber_count(self, channel: str) -> int:
        """How many subscribers `channel` has on this node."""

    @property
    def available(self) -> bool:
        """Whether publications reach other nodes now (always, in memory)."""

    def when_subscribed(self, callback: Callable[[], None]) -> None:
        """Call `callback` once every subscription made so far delivers publications
        from every node (at once, in memory)."""

    def statistics(self) -> BrokerStatistics:
        """An immutable snapshot of this broker's channels."""

    async def start(self) -> None:
        """Connect to whatever carries publications (nothing, in memory)."""

    async def aclose(self) -> None:
        """Disconnect; publications after this are dropped."""
