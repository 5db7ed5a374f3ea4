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

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from npc_server.protocol.frames import ServerFrame


def session_channel(session_id: str) -> str:
    return f"session:{session_id}"


def player_channel(player: str) -> str:
    return f"player:{player}"


def room_channel(room: str) -> str:
    return f"room:{room}"


MessageHandler = Callable[[str, dict[str, Any]], None]
"""Handles a message from another node: `(origin node id, message map with its kind in "k")`."""

RemoteObserver = Callable[[str, int, str, ServerFrame], bool]
"""Sees each frame that arrives from another node, `(origin, number, channel, frame)`, and
says whether to deliver it (False: this node already ended that frame's turn)."""


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

    def when_subscribed(
        self, callback: Callable[[], None], failed: Callable[[], None] | None = None
    ) -> None:
        """Call `callback` once every subscription made so far delivers publications
        from every node (at once, in memory), or `failed` if the link to the other
        nodes is lost first."""

    def statistics(self) -> BrokerStatistics:
        """An immutable snapshot of this broker's channels."""

    # --- between nodes (no other node exists in memory) ------------------

    def send_nowait(self, node: str, message: Mapping[str, Any]) -> None:
        """Queue a message for node `node` (its kind in `message["k"]`)."""

    def signal_nowait(self, channel: str, message: Mapping[str, Any]) -> None:
        """Queue a message for every other node that subscribes `channel`."""

    def on_message(self, kind: str, handler: MessageHandler) -> None:
        """Call `handler` with each message of `kind` that reaches this node."""

    def observe_remote(self, observer: RemoteObserver) -> None:
        """Show `observer` each frame from another node before it is delivered; a frame
        it answers False for is not delivered."""

    @property
    def delivering(self) -> tuple[str, int]:
        """While a frame is delivered: its origin node and that node's number for it."""

    def position(self) -> dict[str, int]:
        """For each node heard from (and this one): the number of its last publication
        delivered here. With `delivering`, it lets two nodes agree which frames each got."""

    async def start(self) -> None:
        """Connect to whatever carries publications (nothing, in memory)."""

    async def aclose(self) -> None:
        """Disconnect; publications after this are dropped."""
