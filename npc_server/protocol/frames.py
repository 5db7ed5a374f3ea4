"""Protocol v1 frames as frozen dataclasses.

Client frames are what `decode_client_frame` returns after validation.
Server frames carry no `seq`: it is assigned when the frame is written to the
socket (see `encode_server_frame`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

RequestId = int | str | None


# --- client -> server ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resume:
    session: str
    seq: int


@dataclass(frozen=True, slots=True)
class Hello:
    T: ClassVar[str] = "hello"
    token: str
    resume: Resume | None = None
    client: str | None = None
    id: RequestId = None
    # Extension: deltas at most every this many ms on this socket (see `Limits.grant_delta_ms`).
    delta_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Say:
    T: ClassVar[str] = "say"
    id: RequestId
    npc: str
    text: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Interrupt:
    T: ClassVar[str] = "interrupt"
    id: RequestId = None
    turn: str | None = None
    shown: int | None = None


@dataclass(frozen=True, slots=True)
class Seen:
    T: ClassVar[str] = "seen"
    turn: str
    shown: int
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Typing:
    T: ClassVar[str] = "typing"
    on: bool
    npc: str | None = None
    room: str | None = None
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Context:
    T: ClassVar[str] = "context"
    data: Mapping[str, Any]
    npc: str | None = None
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Act:
    T: ClassVar[str] = "act"
    id: RequestId
    action: str
    accept: bool


@dataclass(frozen=True, slots=True)
class Join:
    T: ClassVar[str] = "join"
    id: RequestId
    room: str


@dataclass(frozen=True, slots=True)
class Leave:
    T: ClassVar[str] = "leave"
    id: RequestId
    room: str


@dataclass(frozen=True, slots=True)
class Ping:
    T: ClassVar[str] = "ping"
    id: RequestId = None
    ts: Any = None


@dataclass(frozen=True, slots=True)
class Pong:
    T: ClassVar[str] = "pong"
    ts: Any = None
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Refresh:
    T: ClassVar[str] = "refresh"
    id: RequestId
    token: str


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The speaker's client answers a `tool` call the NPC asked it."""

    T: ClassVar[str] = "tool.result"
    call: str
    result: Any
    id: RequestId = None


ClientFrame = (
    Hello
    | Say
    | Interrupt
    | Seen
    | Typing
    | Context
    | Act
    | Join
    | Leave
    | Ping
    | Pong
    | Refresh
    | ToolResult
)


# --- server -> client ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerFrame:
    """Base of server frames; `T` is the wire type, `SEQ` whether it gets a seq."""

    T: ClassVar[str] = ""
    SEQ: ClassVar[bool] = True

    def payload(self) -> dict[str, Any]:
        """The frame's keys, without `t` and `seq`; optional keys left out when None."""
        out: dict[str, Any] = {}
        for name in _field_names(type(self)):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type[ServerFrame]) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


@dataclass(frozen=True, slots=True)
class Welcome(ServerFrame):
    """Sent before any sequenced frame; its own `seq` is the last seq already sent."""

    T: ClassVar[str] = "welcome"
    SEQ: ClassVar[bool] = False
    session: str
    player: str
    resumed: bool
    seq: int
    heartbeat: float
    limits: Mapping[str, int]
    server: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Ack(ServerFrame):
    T: ClassVar[str] = "ack"
    id: RequestId
    turn: str | None = None
    queued: int | None = None


@dataclass(frozen=True, slots=True)
class Error(ServerFrame):
    T: ClassVar[str] = "error"
    code: str
    message: str
    id: RequestId = None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class TurnStart(ServerFrame):
    T: ClassVar[str] = "turn.start"
    turn: str
    npc: str
    player: str
    room: str | None = None
    reply_to: RequestId = None
    # "game" for a turn the game server started (POST /api/say); its `event`, if named.
    caused_by: str | None = None
    event: str | None = None


@dataclass(frozen=True, slots=True)
class Delta(ServerFrame):
    T: ClassVar[str] = "delta"
    turn: str
    text: str
    at: int

    def __init__(self, turn: str, text: str, at: int) -> None:
        # The frame of every token. A frozen dataclass's own __init__ sets each
        # field with object.__setattr__ (a lookup by name, 3x slower): set the slots.
        _set_turn(self, turn)
        _set_text(self, text)
        _set_at(self, at)


_set_turn = getattr(Delta, "turn").__set__  # noqa: B009 (mypy sees the field, not the slot)
_set_text = getattr(Delta, "text").__set__  # noqa: B009
_set_at = getattr(Delta, "at").__set__  # noqa: B009


@dataclass(frozen=True, slots=True)
class Action(ServerFrame):
    T: ClassVar[str] = "action"
    turn: str
    action: str
    name: str
    args: Mapping[str, Any]
    at: int
    approval: bool


@dataclass(frozen=True, slots=True)
class ActionEnd(ServerFrame):
    T: ClassVar[str] = "action.end"
    action: str
    status: str
    turn: str | None = None


@dataclass(frozen=True, slots=True)
class TurnEnd(ServerFrame):
    T: ClassVar[str] = "turn.end"
    turn: str
    reason: str
    chars: int
    kept: int
    usage: Mapping[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Tool(ServerFrame):
    """The NPC asks a tool (the game server or the speaker's client); its reply waits."""

    T: ClassVar[str] = "tool"
    turn: str
    call: str
    name: str
    args: Mapping[str, Any]
    # Who answers: "game" or "client" (then the turn's speaker sends `tool.result`).
    answered_by: str = "game"


@dataclass(frozen=True, slots=True)
class ToolEnd(ServerFrame):
    """A tool call is over: answered, timeout, cancelled or error."""

    T: ClassVar[str] = "tool.end"
    call: str
    status: str
    turn: str | None = None


@dataclass(frozen=True, slots=True)
class Said(ServerFrame):
    T: ClassVar[str] = "said"
    room: str
    player: str
    npc: str
    text: str


@dataclass(frozen=True, slots=True)
class TypingNotice(ServerFrame):
    T: ClassVar[str] = "typing"
    player: str
    on: bool
    room: str | None = None
    npc: str | None = None


@dataclass(frozen=True, slots=True)
class Presence(ServerFrame):
    T: ClassVar[str] = "presence"
    room: str
    player: str
    state: str


@dataclass(frozen=True, slots=True)
class Members(ServerFrame):
    """Who is in a room, sent to a socket after its `join`'s ack: presence frames after
    it bring the changes. `partial`: a server of the cluster did not answer in time."""

    T: ClassVar[str] = "members"
    room: str
    members: list[str]
    partial: bool | None = None


@dataclass(frozen=True, slots=True)
class RoomGap(ServerFrame):
    """Room talk other nodes published (`said`, `typing`, `presence`) may be missing
    before this frame: this node's link to Redis was down, or a node lost publications."""

    T: ClassVar[str] = "room.gap"
    room: str


@dataclass(frozen=True, slots=True)
class Draining(ServerFrame):
    T: ClassVar[str] = "draining"
    retry_after: float


@dataclass(frozen=True, slots=True)
class ServerPing(ServerFrame):
    T: ClassVar[str] = "ping"
    SEQ: ClassVar[bool] = False
    ts: Any = None


@dataclass(frozen=True, slots=True)
class ServerPong(ServerFrame):
    T: ClassVar[str] = "pong"
    SEQ: ClassVar[bool] = False
    ts: Any = None
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits, sent in `welcome.limits` and enforced inbound."""

    frame_bytes: int = 16 * 1024
    text_chars: int = 2000
    queue_frames: int = 256
    queue_bytes: int = 256 * 1024
    rate_per_s: float = 20.0
    rate_burst: int = 40
    flood_close_after: int = 200
    # `context.data`: keys, and bytes once encoded as msgpack.
    context_keys: int = 64
    context_bytes: int = 8 * 1024
    # The largest pacing window a client may ask for in `hello.delta_ms`; 0: none.
    max_delta_ms: int = 1000

    def grant_delta_ms(self, asked: int | None) -> int:
        """The pacing window granted for `hello.delta_ms` (0 when not asked)."""
        return min(asked or 0, self.max_delta_ms)

    def to_wire(self) -> dict[str, int]:
        """The subset of limits a client needs to know."""
        return {
            "frame_bytes": self.frame_bytes,
            "text_chars": self.text_chars,
            "queue_frames": self.queue_frames,
            "queue_bytes": self.queue_bytes,
            "rate_per_s": int(self.rate_per_s),
            "rate_burst": self.rate_burst,
            "context_keys": self.context_keys,
            "context_bytes": self.context_bytes,
        }
