"""`GET /watch?room=R&token=T`: a room's frames as server-sent events, for those who only watch.

Who may watch: anyone, for a room listed in `[watch] public_rooms`; otherwise
the holder of a watch token (`npc-server token --watch R`) naming the room.
The answers before a stream starts, in the order they are checked:

- 400: no `room`, or not a room name;
- 401: a token that is bad or expired (or none, for a room that is not public);
- 403: a valid token that does not name the room;
- 404: a room this node does not know: not public, no members, no active
  turn, and no log (nobody watched it within `resume_window`); in a cluster,
  the other nodes are asked then, and it is a 404 only if none has a member
  (one that does not answer may have: the stream opens);
- 503 with `Retry-After`: the node is draining (in a cluster also: Redis
  cannot say which nodes live, when they had to be asked);
- 429 with `Retry-After`: too many watchers of the room, or from the address.

Then every event of the room's log (`roomlog.py`), after a replay from
`Last-Event-ID` or, for a new watcher or one the window no longer covers, a
snapshot of the room's active turns followed by `live` (in a cluster: with the
turns other nodes run that this node relays, and the members of every node;
`cluster/watchers.py`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from quart import Response

from npc_server.cluster.watchers import delivered, members_elsewhere, relayed_snapshot
from npc_server.events import AuthFailed, Connected, Limited
from npc_server.node import Node
from npc_server.protocol.codec import _ROOM, ROOM_RULE
from npc_server.protocol.codes import CloseCode
from npc_server.protocol.frames import ServerFrame
from npc_server.roomlog import RoomLog, RoomLogs
from npc_server.tokens import TokenError, verify_watch_token
from npc_server.transports.base import close_code_for
from npc_server.transports.sse import (
    SseBody,
    SseStream,
    frame_event,
    json_event,
    refusal,
    sse_response,
)

RETRY_AFTER_S = 5
DRAIN_RETRY_S = 1


@dataclass(frozen=True, slots=True)
class WatchRequest:
    """What a watcher asked for: from the query and the `Last-Event-ID` header."""

    room: str | None
    token: str | None
    last_event_id: str | None
    address: str


class Watcher(SseStream):
    """One watcher of one room: reads the room's log from its cursor."""

    def __init__(
        self,
        node: Node,
        logs: RoomLogs,
        log: RoomLog,
        address: str,
        last_event_id: str | None,
        on_released: Callable[[Watcher], None],
    ) -> None:
        super().__init__(
            node, transport="sse", address=address, keepalive=node.config.watch.keepalive
        )
        self.logs = logs
        self.log = log
        self.room = log.room
        self._on_released = on_released
        self.cursor, self._opening = log.last_seq, b""
        self._live_id, self._members = log.event_id(), list[str]()
        # A replay from Last-Event-ID, or else a snapshot (after a reset) and `live`.
        seq = log.position_of(last_event_id) if last_event_id else None
        self._reset = bool(last_event_id) and seq is None
        # In a cluster a snapshot waits for the other nodes (`prepare`): meanwhile the
        # watcher has not started, so it is never behind the room.
        self._pending = seq is None and node.cluster is not None
        if seq is not None:
            self.cursor = seq
        elif node.cluster is None:  # all there is to know is here
            self._open_at_tip([])
        logs.add_reader(log, self)

    async def prepare(self) -> None:
        """In a cluster, the snapshot waits for the room's channel (a new log's frames from
        other nodes start once they know this node listens) and `live` for the members
        the other nodes hold (`cluster/watchers.py`)."""
        cluster = self.node.cluster
        if cluster is None or not self._pending:
            return
        await delivered(cluster)
        self._open_at_tip(relayed_snapshot(cluster, self.room), pending=True)
        try:
            others, _ = await members_elsewhere(cluster, self.room)
        except Exception:  # Redis cannot say which nodes live: what this node knows
            others = []
        self._opening += self._live(others)
        # Read at once (no wait between this and `take_nowait`): what came meanwhile goes
        # out with the opening, unless it fell out of the replay window.
        self._pending = False

    def _open_at_tip(self, relayed: list[ServerFrame], *, pending: bool = False) -> None:
        """Read from the log's last event on, after a snapshot of the room's turns here
        (and `relayed`, other nodes' turns this node follows), then `live` (unless
        `pending`: the other nodes' members are still asked)."""
        log = self.log
        self.cursor = log.last_seq
        self._live_id = log.event_id()
        self._members = list(self.node.hub.members(self.room))
        parts = []
        if self._reset:
            reason = "the events after Last-Event-ID are no longer kept"
            parts.append(json_event("reset", {"room": self.room, "reason": reason}))
        parts.extend(frame_event(frame) for frame in self.node.room_snapshot(self.room))
        parts.extend(frame_event(frame) for frame in relayed)
        self._opening = b"".join(parts) + (b"" if pending else self._live([]))

    def _live(self, others: list[str]) -> bytes:
        """`live` with the id of the position the snapshot was taken at: this node's
        members then, with `others` (each member once)."""
        members, seen = self._members, set(self._members)
        for member in others:
            if member not in seen:
                seen.add(member)
                members.append(member)
        return json_event("live", {"room": self.room, "members": members}, self._live_id)

    def take_nowait(self) -> bytes:
        data = self.log.read_after(self.cursor)
        if data is None:
            self.request_close(CloseCode.SLOW_CONSUMER, "fell out of the replay window")
            return b""
        self.cursor = self.log.last_seq
        if self._opening:
            data, self._opening = self._opening + data, b""
        return data

    def wake_nowait(self) -> None:
        self.ready.set()

    def overrun(self) -> None:
        if self._pending:
            return
        lag = self.log.max_lag
        self.request_close(CloseCode.SLOW_CONSUMER, f"over {lag} events behind the room")

    def farewell(self) -> bytes:
        if self.close_code is CloseCode.GOING_AWAY:
            return json_event("draining", {"retry_after": DRAIN_RETRY_S})
        return b""

    def release(self) -> None:
        self.logs.remove_reader(self.log, self)
        super().release()
        self._on_released(self)


class WatchService:
    """Admission to `/watch` and the watchers of this node."""

    def __init__(self, node: Node, secret: str) -> None:
        self.node = node
        self._secret = secret
        watch = node.config.watch
        self.public = frozenset(watch.public_rooms)
        self.logs = RoomLogs(
            node.broker,
            max_events=watch.replay_events,
            max_lag=node.config.limits.queue_frames,
            linger=node.config.limits.resume_window,
            clock=node.clock,
        )
        self._by_address: dict[str, int] = {}
        # Requests admitted so far but still asking the other nodes (cluster): they
        # count against the caps, or a burst would pass them all during the ask.
        self._asking: Counter[str] = Counter()

    async def open(self, ask: WatchRequest) -> Response:
        """The stream for a watch request, or the status that refuses it (a refused
        request is no connection: counted, if at all, as the auth failure or limit it is).

        A refused request (400, 401, 403, 404) takes from its address's connect bucket,
        as a WebSocket connect does; once it is empty they are 429s, with no log line:
        a loop of bad tokens was a line each, unbounded. Good requests never take from
        it, so players reconnecting from behind one NAT cannot lock watchers out (and
        `EventSource` never retries a 4xx)."""
        room = ask.room
        failed: AuthFailed | None = None
        if room is None or _ROOM.fullmatch(room) is None:
            refused: Response | None = refusal(400, f"'room' must be a room name: {ROOM_RULE}")
        else:
            refused, failed = self._authorize(room, ask)
        if refused is not None:
            return self._refused(refused, failed, ask.address)
        assert room is not None
        if not self.known(room):
            if self.node.cluster is None:
                return self._refused(self._unknown(room), None, ask.address)
            return await self._decide_in_cluster(room, ask)
        return self._admitted(room, ask)

    def _refused(self, refused: Response, failed: AuthFailed | None, address: str) -> Response:
        if not self.node.address_connects.allow_nowait(address):
            return self._limited("connects_address", "too many refused requests from this address")
        if failed is not None:
            self.node.events.emit(failed)
        return refused

    def _admitted(self, room: str, ask: WatchRequest) -> Response:
        refused = self._admit(room, ask.address)
        if refused is not None:
            return refused
        return sse_response(SseBody(lambda: self._start(room, ask)))

    def _unknown(self, room: str) -> Response:
        return refusal(404, f"no room {room!r} on this server")

    async def _decide_in_cluster(self, room: str, ask: WatchRequest) -> Response:
        """Admitted if another node has a member of the room, or may have: one that does
        not answer in time (as a game say goes ahead then); 503 if Redis cannot say which
        nodes live."""
        assert self.node.cluster is not None
        refused = self._admit(room, ask.address)
        if refused is not None:
            return refused
        keys = (f"address:{ask.address}", f"room:{room}")
        self._asking.update(keys)
        try:
            members, unsure = await members_elsewhere(self.node.cluster, room)
        except Exception:
            return _unreachable()
        finally:
            self._asking.subtract(keys)
            self._asking -= Counter()  # drop the zeros
        if not members and not unsure and not self.known(room):
            return self._refused(self._unknown(room), None, ask.address)
        return self._admitted(room, ask)

    def _authorize(self, room: str, ask: WatchRequest) -> tuple[Response | None, AuthFailed | None]:
        if ask.token is None and room in self.public:
            return None, None
        try:
            claims = verify_watch_token(self._secret, ask.token or "")
        except TokenError as exc:
            message = "a watch token is needed for this room" if ask.token is None else exc.message
            failed = AuthFailed("sse", ask.address, close_code_for(exc), message)
            return refusal(401, message, {"WWW-Authenticate": 'Bearer realm="watch"'}), failed
        if room not in claims.rooms and room not in self.public:
            return refusal(403, f"the token does not name room {room!r}"), None
        return None, None

    def known(self, room: str) -> bool:
        """Whether `room` can be watched as this node knows: public, or members, turns or
        a log here (in a cluster, the other nodes are asked when it is none of these)."""
        node = self.node
        return (
            room in self.public
            or node.hub.room_exists(room)
            or node.room_active(room)
            or self.logs.get(room) is not None
        )

    def _admit(self, room: str, address: str) -> Response | None:
        if self.node.draining:
            return refusal(503, "server draining", {"Retry-After": str(DRAIN_RETRY_S)})
        limits = self.node.config.watch
        log = self.logs.get(room)
        readers = (len(log.readers) if log is not None else 0) + self._asking[f"room:{room}"]
        if readers >= limits.watchers_per_room:
            return self._limited("watchers_room", f"room {room!r} has too many watchers")
        asking = self._asking[f"address:{address}"]
        if self._by_address.get(address, 0) + asking >= limits.watchers_per_address:
            return self._limited("watchers_address", "too many watchers from this address")
        return None

    def _limited(self, what: str, message: str) -> Response:
        self.node.events.emit(Limited(what, None))
        return refusal(429, message, {"Retry-After": str(RETRY_AFTER_S)})

    def _start(self, room: str, ask: WatchRequest) -> Watcher:
        log = self.logs.open(room)
        # Connected as the stream starts, so a client gone before has no unpaired line.
        self.node.events.emit(Connected("sse", ask.address))
        # Counted once it exists: a watcher that failed to start is never released.
        watcher = Watcher(self.node, self.logs, log, ask.address, ask.last_event_id, self._released)
        self._by_address[ask.address] = self._by_address.get(ask.address, 0) + 1
        return watcher

    def _released(self, watcher: Watcher) -> None:
        left = self._by_address.get(watcher.address, 0) - 1
        if left > 0:
            self._by_address[watcher.address] = left
        else:
            self._by_address.pop(watcher.address, None)

    def sweep_nowait(self) -> int:
        """Forget room logs nobody watched within the resume window."""
        return self.logs.sweep_nowait()


def _unreachable() -> Response:
    return refusal(503, "the cluster cannot be reached", {"Retry-After": str(DRAIN_RETRY_S)})
