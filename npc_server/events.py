"""What happens on a node, as events: the operations feed, metrics and logs listen.

Events are frozen dataclasses with a `KIND`; `event_fields()` gives their
JSON-ready fields. Emitting is a sync call that costs one check when nobody
listens, and none is emitted per token. A listener that raises is logged and
never reaches the code that emitted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Connected:
    """A transport accepted a client (before its token is checked)."""

    KIND: ClassVar[str] = "connected"
    transport: str
    address: str


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """A client was turned away: bad or expired token (code says which)."""

    KIND: ClassVar[str] = "auth_failed"
    transport: str
    address: str
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class SessionAttached:
    """A client has a session: `outcome` is new, resumed, or snapshot (a resume that failed)."""

    KIND: ClassVar[str] = "session"
    transport: str
    player: str
    session: str
    outcome: str


@dataclass(frozen=True, slots=True)
class Closed:
    """A client is gone; `code` is ours (None when the peer left first, with `peer_code`)."""

    KIND: ClassVar[str] = "closed"
    transport: str
    address: str
    player: str | None
    session: str | None
    code: int | None
    peer_code: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Limited:
    """A limit refused something: frames, connects_player, connects_address, turns, tokens."""

    KIND: ClassVar[str] = "limited"
    what: str
    player: str | None


@dataclass(frozen=True, slots=True)
class TurnStarted:
    KIND: ClassVar[str] = "turn_started"
    turn: str
    npc: str
    player: str
    room: str | None


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """A turn ended; times in seconds on the node's clock.

    `first_delta_s`: from the turn's start to its first text (None if none);
    `interrupt_s`: from the interrupt request to `turn.end` being published;
    `tokens`: text pieces the backend streamed (one per token for model backends).
    """

    KIND: ClassVar[str] = "turn_ended"
    turn: str
    npc: str
    player: str
    room: str | None
    reason: str
    chars: int
    kept: int
    first_delta_s: float | None
    duration_s: float
    interrupt_s: float | None
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class BackendFailed:
    """A backend ended a turn with an error: `reason` is error or timeout."""

    KIND: ClassVar[str] = "backend_error"
    npc: str
    backend: str
    turn: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class DrainStarted:
    KIND: ClassVar[str] = "draining"
    sessions: int


NodeEvent = (
    Connected
    | AuthFailed
    | SessionAttached
    | Closed
    | Limited
    | TurnStarted
    | TurnEnded
    | BackendFailed
    | DrainStarted
)
Listener = Callable[[NodeEvent], None]


def event_fields(event: NodeEvent) -> dict[str, Any]:
    """The event as a JSON-ready dict with its kind under `event`."""
    return {"event": event.KIND, **asdict(event)}


class EventBus:
    """Listeners of a node's events, called in order, synchronously."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add a listener; returns the function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def emit(self, event: NodeEvent) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("an event listener failed on %s", event.KIND)

    @property
    def listened(self) -> bool:
        return bool(self._listeners)
