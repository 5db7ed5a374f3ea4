"""Turns this node relays but another node runs: followed, so they never hang.

Every frame from another node passes `observe` before its local delivery. A
`turn.start` opens a remote turn, its deltas add to what reached this node, its
`turn.end` closes it. When the frames of a remote turn can no longer be trusted
to arrive whole, this node ends the turn for its own subscribers with
`turn.end{reason:"error"}` and drops whatever of it still comes:

- the turn's node died (its lease lapsed: `end_from`);
- this node lost Redis, so frames may have been lost (`end_all`);
- the turn's node says it could not publish on the turn's channel (`end_on`).

Each node does this for its own sockets, so it needs no Redis.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from npc_server.protocol.frames import Ack, Delta, ServerFrame, TurnEnd, TurnStart

ENDED_REMEMBERED = 10_000  # turn ids whose late frames are dropped


@dataclass(slots=True)
class RemoteTurn:
    id: str
    origin: str
    channel: str
    npc: str
    player: str
    room: str | None
    order: int
    number: int  # its origin's number for the turn.start
    parts: list[str] = field(default_factory=list)
    chars: int = 0

    @property
    def text(self) -> str:
        return "".join(self.parts)


class RemoteTurns:
    """Open turns of other nodes, by id, as seen by this node's broker."""

    def __init__(
        self,
        deliver_local: Callable[[str, ServerFrame], None],
        on_orphaned: Callable[[RemoteTurn], None] | None = None,
    ) -> None:
        self._deliver = deliver_local
        self._on_orphaned = on_orphaned or (lambda turn: None)
        self._open: dict[str, RemoteTurn] = {}
        self._ended: set[str] = set()
        self._ended_order: deque[str] = deque()
        self._order = 0

    def observe(self, origin: str, number: int, channel: str, frame: ServerFrame) -> bool:
        """Follow one frame from another node; False drops it (its turn ended here)."""
        if type(frame) is Delta:  # the hot path: one lookup per relayed token
            turn = self._open.get(frame.turn)
            if turn is not None:
                turn.parts.append(frame.text)
                turn.chars = frame.at + len(frame.text)
                return True
            return frame.turn not in self._ended
        if type(frame) is TurnStart:
            if frame.turn in self._ended:
                return False
            self._order += 1
            self._open[frame.turn] = RemoteTurn(
                frame.turn,
                origin,
                channel,
                frame.npc,
                frame.player,
                frame.room,
                self._order,
                number,
            )
            return True
        turn_id = getattr(frame, "turn", None)
        if not isinstance(turn_id, str) or type(frame) is Ack:  # answers always pass
            return True
        if type(frame) is TurnEnd:
            self._open.pop(turn_id, None)
        return turn_id not in self._ended

    def get(self, turn_id: str) -> RemoteTurn | None:
        return self._open.get(turn_id)

    def origins(self) -> set[str]:
        return {turn.origin for turn in self._open.values()}

    def newest_started_by(self, player: str) -> RemoteTurn | None:
        mine = [t for t in self._open.values() if t.player == player]
        return max(mine, key=lambda t: t.order, default=None)

    def written_on(self, channel: str) -> dict[str, int]:
        """What reached this node of each open turn on `channel`, by turn id."""
        return {t.id: t.chars for t in self._open.values() if t.channel == channel}

    def __len__(self) -> int:
        return len(self._open)

    # --- ending what cannot finish --------------------------------------------

    def end_from(self, origins: set[str]) -> list[RemoteTurn]:
        """Nodes that died: end their turns here; their memory cut is `on_orphaned`'s."""
        ended = self._end(lambda t: t.origin in origins)
        for turn in ended:
            self._on_orphaned(turn)
        return ended

    def end_all(self) -> list[RemoteTurn]:
        """This node lost Redis: every remote turn may have lost frames."""
        return self._end(lambda t: True)

    def end_on(self, origin: str, channel: str, upto: int) -> list[RemoteTurn]:
        """`origin` lost publications on `channel` up to its number `upto`: its turns
        there that had started by then lost frames (later ones did not)."""
        return self._end(lambda t: t.origin == origin and t.channel == channel and t.number <= upto)

    def _end(self, which: Callable[[RemoteTurn], bool]) -> list[RemoteTurn]:
        ended = [t for t in self._open.values() if which(t)]
        for turn in ended:
            del self._open[turn.id]
            self._remember_ended(turn.id)
            # What reached this node stays: the player saw it, the NPC keeps it.
            self._deliver(turn.channel, TurnEnd(turn.id, "error", turn.chars, turn.chars))
        return ended

    def _remember_ended(self, turn_id: str) -> None:
        self._ended.add(turn_id)
        self._ended_order.append(turn_id)
        if len(self._ended_order) > ENDED_REMEMBERED:
            self._ended.discard(self._ended_order.popleft())
