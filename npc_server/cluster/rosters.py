"""A room's members over the cluster, for the `members` frame that follows a join.

A joiner's node knows its own members; the others are asked with the API's room
listing (`cluster/watchers.py` `members_elsewhere`). Presence that other nodes publish
while they are asked reaches this node meanwhile (the joiner's session subscribed to
the room before the ack) and goes to the joiner before the roster; so the roster
applies it too: a `joined` or `left` a node published after its answer is in the
roster, and one it published before is in its answer already (a node's publications
reach this node in the order it made them), so applying it again changes nothing.
The frame then says who is there as of its place among the joiner's frames, and
every presence after it is a change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from npc_server.brokers import room_channel
from npc_server.cluster.watchers import members_elsewhere
from npc_server.protocol.frames import Presence, ServerFrame

if TYPE_CHECKING:
    from npc_server.cluster.forward import Forwarder


class PresenceSeen:
    """A broker subscriber of one room that keeps the presence frames it is given."""

    player = ""  # no player's `exclude` skips it

    def __init__(self, room: str, session: str) -> None:
        self.id = f"roster:{room}:{session}"
        self.room = room
        self.seen: list[Presence] = []

    def push_nowait(self, frame: ServerFrame) -> None:
        if type(frame) is Presence and frame.room == self.room:
            self.seen.append(frame)

    def drop_turn_nowait(self, turn: str) -> int:
        return 0


async def roster(cluster: Forwarder, room: str, session: str) -> tuple[set[str], bool]:
    """The members other nodes have, with the presence seen while they were asked, and
    whether a node did not answer (or Redis could not say which live)."""
    seen = PresenceSeen(room, session)
    channel = room_channel(room)
    cluster.broker.subscribe(channel, seen)
    try:
        try:
            members, partial = await members_elsewhere(cluster, room)
        except Exception:
            members, partial = [], True
        found = set(members)
        for presence in seen.seen:
            if presence.state == "joined":
                found.add(presence.player)
            elif presence.state == "left":
                found.discard(presence.player)
        return found, partial
    finally:
        cluster.broker.unsubscribe(channel, seen)
