"""What one node hands another when a session moves, and the stand-in that waits for it.

Sans I/O (no asyncio): `export_state` reads a session in one synchronous
step, `encode_state`/`decode_state` turn it into a message map and back, and
`StandIn` buffers what the broker delivers for the session on the new node
until the state arrives, keeping only what the old node had not received
(`kept`: compare each frame's origin and number with the old node's position).

Another node's message is input like a client's: `decode_state` checks every
type, size and seq, and raises `BadState` naming what did not fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from npc_server.brokers import wire
from npc_server.protocol.codec import _ROOM, fits_context
from npc_server.protocol.frames import ServerFrame
from npc_server.protocol.scan import unpack_scanned
from npc_server.session import Session

# A state message must fit one publication (wire.MAX_BYTES) with room for its envelope.
MAX_STATE_BYTES = wire.MAX_BYTES - 64 * 1024
MAX_FRAME_BYTES = 256 * 1024
MAX_NODES = 4096
MAX_ID = 200


class BadState(ValueError):
    """A handover message from another node that is not a session's state."""


@dataclass(frozen=True, slots=True)
class SessionExport:
    """A session as its node hands it over: enough to continue it elsewhere."""

    session: str
    player: str
    last_seq: int
    replay: list[tuple[int, bytes]]  # written frames after the client's seq
    queued: list[ServerFrame]  # frames not yet written, in order
    rooms: list[str]
    position: dict[str, int]  # the old node's broker position at export
    contexts: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    # Turns under way that the session is in, with their channels: followed at once
    # on the new node, which may not have seen them start.
    turns: list[tuple[str, str]] = field(default_factory=list)


def export_state(
    session: Session,
    after: int,
    rooms: list[str],
    position: dict[str, int],
    contexts: dict[str, Mapping[str, Any]],
) -> SessionExport | None:
    """Take what the session holds after the client's seq `after`; None if the
    window no longer covers it. Empties the session's queue (the frames move)."""
    replay = session.replay.items_after(after, session.last_seq)
    if replay is None:
        return None
    return SessionExport(
        session.id,
        session.player,
        session.last_seq,
        replay,
        session.take_queued_nowait(),
        rooms,
        position,
        contexts,
    )


def encode_state(request: str, state: SessionExport) -> dict[str, Any] | None:
    """The `handover.state` message, or None when it would not fit one publication."""
    queued = []
    for frame in state.queued:
        body = frame.payload()
        body["t"] = frame.T
        queued.append(body)
    message = {
        "k": "handover.state",
        "req": request,
        "ok": True,
        "session": state.session,
        "player": state.player,
        "seq": state.last_seq,
        "replay": [[seq, data] for seq, data in state.replay],
        "queue": queued,
        "rooms": list(state.rooms),
        "position": dict(state.position),
        "contexts": {scope: dict(data) for scope, data in state.contexts.items()},
        "turns": [[turn, channel] for turn, channel in state.turns],
    }
    if len(msgpack.packb(message, use_bin_type=True)) > MAX_STATE_BYTES:
        return None
    return message


def refusal(request: str) -> dict[str, Any]:
    """The `handover.state` answer that says: no state (resume with a snapshot)."""
    return {"k": "handover.state", "req": request, "ok": False}


def decode_state(
    message: Mapping[str, Any], session: str, player: str, after: int, window: bool = False
) -> SessionExport:
    """The state in a `handover.state` message for `session` of `player`, resumed after
    seq `after`; `BadState` if anything does not fit. `window`: the replay may start
    before `after` (a parked state holds the whole window); what the client has goes."""
    if message.get("session") != session or message.get("player") != player:
        raise BadState("the state is for another session or player")
    last_seq = _int(message.get("seq"), "seq")
    entries = _list(message.get("replay"), "replay", 1 << 16)
    if window:
        entries = [e for e in entries if not (isinstance(e, list) and _seq_at_most(e, after))]
    replay = _replay(entries, after, last_seq)
    queued = _queued(message.get("queue"))
    rooms = check_rooms(message.get("rooms"))
    position = _position(message.get("position"))
    contexts = _contexts(message.get("contexts"))
    turns = _turns(message.get("turns", []))
    return SessionExport(
        session, player, last_seq, replay, queued, rooms, position, contexts, turns
    )


def _turns(value: Any) -> list[tuple[str, str]]:
    turns = []
    for entry in _list(value, "turns", 1024):
        ok = isinstance(entry, list) and len(entry) == 2
        if not ok or not all(isinstance(v, str) and 0 < len(v) <= MAX_ID * 4 for v in entry):
            raise BadState(f"a turn under way must be [turn id, channel], not {entry!r:.80}")
        turns.append((entry[0], entry[1]))
    return turns


def _seq_at_most(entry: list[Any], seq: int) -> bool:
    head = entry[0] if entry else None
    return isinstance(head, int) and not isinstance(head, bool) and head <= seq


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 62:
        raise BadState(f"{what} must be an integer >= 0, not {value!r}")
    return value


def _list(value: Any, what: str, limit: int) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise BadState(f"{what} must be a list of at most {limit} entries")
    return value


def _replay(value: Any, after: int, last_seq: int) -> list[tuple[int, bytes]]:
    """Encoded frames after+1 .. last_seq, each a map with its `t` and that `seq`."""
    entries = _list(value, "replay", 1 << 16)
    if last_seq < after or len(entries) != last_seq - after:
        raise BadState(f"replay must hold seq {after + 1} to {last_seq}")
    out = []
    for expected, entry in enumerate(entries, after + 1):
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] == expected):
            raise BadState(f"replay entry {expected} is not [seq, frame]")
        data = entry[1]
        if not isinstance(data, bytes) or len(data) > MAX_FRAME_BYTES:
            raise BadState(f"replay entry {expected} is not an encoded frame")
        _check_encoded(data, expected)
        out.append((expected, data))
    return out


def _check_encoded(data: bytes, seq: int) -> None:
    try:
        body = unpack_scanned(data)
    except Exception:
        raise BadState(f"replay entry {seq} is not msgpack") from None
    if not isinstance(body, dict) or body.pop("seq", None) != seq:
        raise BadState(f"replay entry {seq} does not carry its seq")
    try:
        wire.decode_frame(body)
    except wire.WireError as exc:
        raise BadState(f"replay entry {seq}: {exc}") from None


def _queued(value: Any) -> list[ServerFrame]:
    frames = []
    for body in _list(value, "queue", 1 << 16):
        if not isinstance(body, dict):
            raise BadState("a queued frame is not a map")
        try:
            frames.append(wire.decode_frame(body))
        except wire.WireError as exc:
            raise BadState(f"a queued frame: {exc}") from None
    return frames


def check_adopted(value: Any) -> list[tuple[str, str, int]]:
    """The sessions a draining node asks this one to take: `[session, player, seq]`s."""
    adopted: list[tuple[str, str, int]] = []
    for entry in _list(value, "sessions", 1000):
        if not isinstance(entry, list) or len(entry) != 3:
            raise BadState(f"{entry!r} is not [session, player, seq]")
        session, player, seq = entry
        adopted.append((_id(session, "session"), _id(player, "player"), _int(seq, "seq")))
    return adopted


def check_ids(value: Any, what: str) -> list[str]:
    """Session ids from another node (at most a thousand)."""
    return [_id(name, what) for name in _list(value, what, 1000)]


def _id(name: Any, what: str) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= MAX_ID:
        raise BadState(f"{what}: {name!r} is not an id")
    return name


def check_rooms(value: Any) -> list[str]:
    """Room names from another node, checked as a client's `join` is."""
    rooms = _list(value, "rooms", 256)
    for room in rooms:
        if not isinstance(room, str) or _ROOM.fullmatch(room) is None:
            raise BadState(f"{room!r} is not a room name")
    return sorted(set(rooms))


def _position(value: Any) -> dict[str, int]:
    if not isinstance(value, dict) or len(value) > MAX_NODES:
        raise BadState("position must be a map of node ids to numbers")
    for node, number in value.items():
        if not isinstance(node, str) or len(node) > MAX_ID:
            raise BadState(f"position: {node!r} is not a node id")
        _int(number, f"position[{node}]")
    return dict(value)


def _contexts(value: Any) -> dict[str, Mapping[str, Any]]:
    if not isinstance(value, dict) or len(value) > 1024:
        raise BadState("contexts must be a map of scopes to maps")
    for scope, data in value.items():
        if not isinstance(scope, str) or len(scope) > MAX_ID or not isinstance(data, dict):
            raise BadState(f"contexts: {scope!r} is not a scope with a map")
        if not fits_context(data):
            raise BadState(f"contexts: {scope!r} is not a context a client could set")
    return dict(value)


# --- the new node's side ----------------------------------------------------------


class StandIn:
    """A subscriber under the session's id that records what arrives during a handover."""

    def __init__(self, session_id: str, player: str, origin_of: Any, max_frames: int) -> None:
        self.id = session_id
        self.player = player
        self._origin_of = origin_of  # () -> (origin node, its number): broker.delivering
        self.max_frames = max_frames
        self.frames: list[tuple[str, int, ServerFrame]] = []
        self.dropped_turns: list[str] = []
        self.overflowed = False

    def push_nowait(self, frame: ServerFrame) -> None:
        if len(self.frames) >= self.max_frames:
            self.overflowed = True  # a handover this slow resumes with a snapshot
            return
        origin, number = self._origin_of()
        self.frames.append((origin, number, frame))

    def drop_turn_nowait(self, turn: str) -> int:
        before = len(self.frames)
        self.frames = [f for f in self.frames if not _delta_of(f[2], turn)]
        self.dropped_turns.append(turn)
        return before - len(self.frames)

    def kept(self, position: Mapping[str, int]) -> list[ServerFrame]:
        """Frames the old node had not received when it exported (`position`), in order."""
        return [frame for origin, number, frame in self.frames if number > position.get(origin, 0)]


def _delta_of(frame: ServerFrame, turn: str) -> bool:
    return frame.T == "delta" and getattr(frame, "turn", None) == turn
