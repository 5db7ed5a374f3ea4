"""Who is connected, and the subscriptions that follow: sessions, players, rooms.

The hub owns the registry of this node's sessions and the room memberships,
and keeps each session subscribed to its channels in the broker: its own,
its player's and its player's rooms'. Frames are published through the hub
(`send_to_*`), which only names the channel; the broker delivers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from npc_server.brokers import Broker, player_channel, room_channel, session_channel
from npc_server.outbound import QueueTotals
from npc_server.protocol.frames import Presence, ServerFrame
from npc_server.session import Session


@dataclass(frozen=True, slots=True)
class HubStatistics:
    sessions: int
    players: int
    rooms: int
    memberships: int


class Addressed(Protocol):
    """A session here or on another node: frames for it go on its channel."""

    @property
    def id(self) -> str: ...


class Hub:
    """The registry of sessions, players and rooms of one node."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._sessions: dict[str, Session] = {}
        self._by_player: dict[str, dict[str, Session]] = {}
        self._rooms: dict[str, set[str]] = {}
        self._rooms_of: dict[str, set[str]] = {}
        # The queue counters of removed sessions, so that totals never go down (metrics).
        self.retired_queues = QueueTotals()

    # --- sessions ---------------------------------------------------------

    def add(self, session: Session) -> None:
        self._sessions[session.id] = session
        self._by_player.setdefault(session.player, {})[session.id] = session
        for channel in self._channels_of(session):
            self.broker.subscribe(channel, session)

    def remove(self, session: Session) -> bool:
        """Forget a session; True when it was the player's last one."""
        if self._sessions.pop(session.id, None) is None:
            return False
        self.retired_queues.add(session.queue.statistics())
        for channel in self._channels_of(session):
            self.broker.unsubscribe(channel, session)
        mine = self._by_player[session.player]
        del mine[session.id]
        if mine:
            return False
        del self._by_player[session.player]
        return True

    def _channels_of(self, session: Session) -> list[str]:
        rooms = sorted(self._rooms_of.get(session.player, ()))
        return [
            session_channel(session.id),
            player_channel(session.player),
            *(room_channel(room) for room in rooms),
        ]

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def all_sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def sessions_of(self, player: str) -> list[Session]:
        return list(self._by_player.get(player, {}).values())

    def is_online(self, player: str) -> bool:
        return player in self._by_player

    # --- rooms ------------------------------------------------------------

    def join(self, room: str, player: str, *, quiet: bool = False) -> bool:
        """Add a player to a room; False if already a member. `quiet`: no presence
        (a session handed over from another node, where the room saw it join)."""
        members = self._rooms.setdefault(room, set())
        if player in members:
            return False
        members.add(player)
        self._rooms_of.setdefault(player, set()).add(room)
        channel = room_channel(room)
        for session in self.sessions_of(player):
            self.broker.subscribe(channel, session)
        if not quiet:
            self.announce(room, player, "joined")
        return True

    def announce(self, room: str, player: str, state: str) -> None:
        """Tell the room's other members that `player` joined or left."""
        self.send_to_room(room, Presence(room, player, state), exclude=player)

    def leave(self, room: str, player: str, *, quiet: bool = False) -> bool:
        """Remove a player from a room; False if not a member. `quiet`: no presence
        (the player's session moved to another node and stays in the room there)."""
        members = self._rooms.get(room)
        if members is None or player not in members:
            return False
        members.discard(player)
        if not members:
            del self._rooms[room]
        rooms = self._rooms_of[player]
        rooms.discard(room)
        if not rooms:
            del self._rooms_of[player]
        channel = room_channel(room)
        for session in self.sessions_of(player):
            self.broker.unsubscribe(channel, session)
        if not quiet:
            self.announce(room, player, "left")
        return True

    def leave_all(self, player: str, *, quiet: bool = False) -> list[str]:
        """Take a player out of every room (its last session is gone)."""
        rooms = sorted(self._rooms_of.get(player, ()))
        for room in rooms:
            self.leave(room, player, quiet=quiet)
        return rooms

    def members(self, room: str) -> tuple[str, ...]:
        return tuple(sorted(self._rooms.get(room, ())))

    def member_count(self, room: str) -> int:
        return len(self._rooms.get(room, ()))

    def is_member(self, room: str, player: str) -> bool:
        return player in self._rooms.get(room, ())

    def rooms_of(self, player: str) -> set[str]:
        return set(self._rooms_of.get(player, ()))

    def room_exists(self, room: str) -> bool:
        return room in self._rooms

    # --- delivery ---------------------------------------------------------

    def send_to_session(self, session: Addressed, frame: ServerFrame) -> None:
        self.broker.publish_nowait(session_channel(session.id), frame)

    def send_to_player(self, player: str, frame: ServerFrame) -> None:
        self.broker.publish_nowait(player_channel(player), frame)

    def send_to_room(self, room: str, frame: ServerFrame, exclude: str | None = None) -> None:
        self.broker.publish_nowait(room_channel(room), frame, exclude)

    def statistics(self) -> HubStatistics:
        return HubStatistics(
            sessions=len(self._sessions),
            players=len(self._by_player),
            rooms=len(self._rooms),
            memberships=sum(len(m) for m in self._rooms.values()),
        )
