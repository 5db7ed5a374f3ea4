"""Who is connected and where frames go: sessions, players, rooms.

Every server frame reaches sockets through one of `send_to_session`,
`send_to_player`, `send_to_room` or `send_to_audience`; they only enqueue.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from npc_server.protocol.frames import Presence, ServerFrame
from npc_server.session import Session
from npc_server.turns import Audience


@dataclass(frozen=True, slots=True)
class HubStatistics:
    sessions: int
    players: int
    rooms: int
    memberships: int


_NO_SESSIONS: dict[str, Session] = {}


class Hub:
    """The registry of sessions, players and rooms of one server process."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self._by_player: dict[str, dict[str, Session]] = {}
        self._rooms: dict[str, set[str]] = {}
        self._rooms_of: dict[str, set[str]] = {}

    # --- sessions ---------------------------------------------------------

    def add(self, session: Session) -> None:
        self.sessions[session.id] = session
        self._by_player.setdefault(session.player, {})[session.id] = session

    def remove(self, session: Session) -> bool:
        """Forget a session; True when it was the player's last one."""
        self.sessions.pop(session.id, None)
        mine = self._by_player.get(session.player)
        if mine is None:
            return False
        mine.pop(session.id, None)
        if mine:
            return False
        del self._by_player[session.player]
        return True

    def sessions_of(self, player: str) -> list[Session]:
        return list(self._by_player.get(player, {}).values())

    def is_online(self, player: str) -> bool:
        return player in self._by_player

    # --- rooms ------------------------------------------------------------

    def join(self, room: str, player: str) -> bool:
        """Add a player to a room; False if already a member."""
        members = self._rooms.setdefault(room, set())
        if player in members:
            return False
        members.add(player)
        self._rooms_of.setdefault(player, set()).add(room)
        self.send_to_room(room, Presence(room, player, "joined"), exclude=player)
        return True

    def leave(self, room: str, player: str) -> bool:
        """Remove a player from a room; False if not a member."""
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
        self.send_to_room(room, Presence(room, player, "left"), exclude=player)
        return True

    def leave_all(self, player: str) -> list[str]:
        """Take a player out of every room (its last session is gone)."""
        rooms = sorted(self._rooms_of.get(player, ()))
        for room in rooms:
            self.leave(room, player)
        return rooms

    def members(self, room: str) -> tuple[str, ...]:
        return tuple(sorted(self._rooms.get(room, ())))

    def is_member(self, room: str, player: str) -> bool:
        return player in self._rooms.get(room, ())

    def rooms_of(self, player: str) -> set[str]:
        return set(self._rooms_of.get(player, ()))

    def room_exists(self, room: str) -> bool:
        return room in self._rooms

    # --- delivery ---------------------------------------------------------

    def send_to_session(self, session: Session, frame: ServerFrame) -> None:
        session.push_nowait(frame)

    def send_to_player(self, player: str, frame: ServerFrame) -> None:
        # Hot path (every delta): iterate in place; pushing never changes the registry.
        for session in self._by_player.get(player, _NO_SESSIONS).values():
            session.push_nowait(frame)

    def send_to_room(self, room: str, frame: ServerFrame, exclude: str | None = None) -> None:
        for player in self._rooms.get(room, ()):
            if player != exclude:
                self.send_to_player(player, frame)

    def _audience_sessions(self, audience: Audience) -> Iterator[Session]:
        if audience.room is not None:
            for player in self._rooms.get(audience.room, ()):
                yield from self._by_player.get(player, _NO_SESSIONS).values()
        elif audience.player is not None:
            yield from self._by_player.get(audience.player, _NO_SESSIONS).values()

    def send_to_audience(self, audience: Audience, frame: ServerFrame) -> None:
        if audience.room is None and audience.player is not None:
            self.send_to_player(audience.player, frame)
            return
        for session in self._audience_sessions(audience):
            session.push_nowait(frame)

    def drop_turn(self, audience: Audience, turn: str) -> None:
        for session in self._audience_sessions(audience):
            session.drop_turn_nowait(turn)

    def statistics(self) -> HubStatistics:
        return HubStatistics(
            sessions=len(self.sessions),
            players=len(self._by_player),
            rooms=len(self._rooms),
            memberships=sum(len(m) for m in self._rooms.values()),
        )
