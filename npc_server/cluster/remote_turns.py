"""Turns this node relays but another node runs: followed, so they never hang.

Every frame from another node passes `observe` before its local delivery. A
`turn.start` opens a remote turn, its deltas add to what reached this node, its
`turn.end` closes it. When the frames of a remote turn can no longer be trusted
to arrive whole, this node ends the turn for its own subscribers with
`turn.end{reason:"error"}` and drops whatever of it still comes:

- the turn's node died (its lease lapsed: `end_from`);
- this node lost Redis, so frames may have been lost (`end_all`);
- the turn's node says it could not publish on the turn's channel (`end_on`).

A delta or action of a turn whose start this node never relayed is dropped:
no session here saw the turn begin (they joined or connected since), and the
catch-up they asked the turn's node for brings its start and its text so far
(published after those frames, so nothing is lost or shown twice). If no
catch-up was asked for it (the turn began as a session here subscribed), the
first such frame is reported (`on_missing`): `late_starts` asks the turn's node.

Each node does this for its own sockets, so it needs no Redis.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from npc_server.protocol.frames import Ack, Action, Delta, ServerFrame, TurnEnd, TurnStart

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
    start: TurnStart | None = None
    parts: list[str] = field(default_factory=list)
    chars: int = 0

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _audience_channel(start: TurnStart) -> str:
    return f"room:{start.room}" if start.room is not None else f"player:{start.player}"


class RemoteTurns:
    """Open turns of other nodes, by id, as seen by this node's broker."""

    def __init__(
        self,
        deliver_local: Callable[[str, ServerFrame], None],
        on_orphaned: Callable[[RemoteTurn], None] | None = None,
        on_missing: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self._deliver = deliver_local
        self._on_orphaned = on_orphaned or (lambda turn: None)
        self.on_missing = on_missing or (lambda origin, channel, turn: None)
        self._open: dict[str, RemoteTurn] = {}
        self._ended: set[str] = set()
        self._ended_order: deque[str] = deque()
        self._order = 0
        self._duplicate_snapshots: set[str] = set()
        # Says queued on another node for a session here: turn id -> (node, session channel).
        self._queued: dict[str, tuple[str, str]] = {}
        # Channels a session moving here listens to (a handover): turns under way on
        # them are followed from the frame that comes, as the session saw their start.
        self._adopting: dict[str, int] = {}

    def observe(self, origin: str, number: int, channel: str, frame: ServerFrame) -> bool:
        """Follow one frame from another node; False drops it (its turn ended here)."""
        if type(frame) is Delta:  # the hot path: one lookup per relayed token
            turn = self._open.get(frame.turn)
            if turn is not None:
                if frame.at == 0 and self._duplicate_snapshot(frame.turn, channel):
                    return False  # the text of a catch-up start dropped below
                turn.parts.append(frame.text)
                turn.chars = frame.at + len(frame.text)
                return True
            if self._adopting and channel in self._adopting:
                self._learn(origin, number, channel, frame)
                return True
            self._missed(origin, channel, frame.turn)
            return False
        if type(frame) is TurnStart:
            if frame.turn in self._ended:
                return False
            if frame.turn in self._open:
                # A catch-up's start for a turn this node already relays: its sessions
                # have it (or got it from this node); drop it and its text at 0.
                if channel.startswith("session:"):
                    self._duplicate_snapshots.add(frame.turn)
                    return False
                return True
            # A live start comes on its audience's channel, a catch-up's on a session's.
            self._queued.pop(frame.turn, None)
            self._order += 1
            self._open[frame.turn] = RemoteTurn(
                frame.turn,
                origin,
                _audience_channel(frame),
                frame.npc,
                frame.player,
                frame.room,
                self._order,
                number,
                frame,
            )
            return True
        if type(frame) is Action and frame.turn not in self._open:
            if channel in self._adopting:
                return True
            self._missed(origin, channel, frame.turn)
            return False
        turn_id = getattr(frame, "turn", None)
        if not isinstance(turn_id, str):
            return True
        if type(frame) is Ack:  # answers always pass; a queued say is followed
            if frame.queued is not None and len(self._queued) < ENDED_REMEMBERED:
                self._queued[turn_id] = (origin, channel)
            return True
        if type(frame) is TurnEnd:
            self._open.pop(turn_id, None)
            self._queued.pop(turn_id, None)
            self._duplicate_snapshots.discard(turn_id)
        return turn_id not in self._ended

    def _missed(self, origin: str, channel: str, turn_id: str) -> None:
        if turn_id not in self._ended and not channel.startswith("session:"):
            self.on_missing(origin, channel, turn_id)

    def caught_up(self, origin: str, channel: str, frames: list[ServerFrame]) -> list[ServerFrame]:
        """The start of a turn that was `on_missing` and its text so far, from its node:
        those to deliver on `channel` (none if the turn is followed or over by now)."""
        if not frames or type(frames[0]) is not TurnStart:
            return []
        start = frames[0]
        if start.turn in self._open or start.turn in self._ended:
            return []
        if _audience_channel(start) != channel:
            return []
        return [
            f
            for f in frames
            if getattr(f, "turn", None) == start.turn and self.observe(origin, 0, channel, f)
        ]

    def adopt(self, channel: str) -> None:
        """A session moving here subscribes `channel`: follow turns already under way."""
        self._adopting[channel] = self._adopting.get(channel, 0) + 1

    def release(self, channel: str) -> None:
        left = self._adopting.get(channel, 0) - 1
        if left > 0:
            self._adopting[channel] = left
        else:
            self._adopting.pop(channel, None)

    def follow(
        self, turns: list[tuple[str, str]], is_local: Callable[[str], object | None]
    ) -> None:
        """Turns under way that a session handed over to this node is in (ids and
        channels, from its old node): their next frames reach it."""
        from npc_server.cluster.forward import owner_of

        for turn_id, channel in turns:
            if turn_id in self._open or turn_id in self._ended or is_local(turn_id):
                continue
            self._order += 1
            origin = owner_of(turn_id) or ""
            self._open[turn_id] = RemoteTurn(turn_id, origin, channel, "", "", None, self._order, 0)

    def _learn(self, origin: str, number: int, channel: str, delta: Delta) -> None:
        # Its start came before: only what follows is known (the text from `at` on).
        self._order += 1
        turn = RemoteTurn(delta.turn, origin, channel, "", "", None, self._order, number)
        turn.parts.append(delta.text)
        turn.chars = delta.at + len(delta.text)
        self._open[delta.turn] = turn

    def _duplicate_snapshot(self, turn_id: str, channel: str) -> bool:
        if turn_id in self._duplicate_snapshots and channel.startswith("session:"):
            self._duplicate_snapshots.discard(turn_id)
            return True
        return False

    def get(self, turn_id: str) -> RemoteTurn | None:
        return self._open.get(turn_id)

    def open_on(self, channels: set[str]) -> list[RemoteTurn]:
        return [t for t in self._open.values() if t.channel in channels]

    def origins(self) -> set[str]:
        return {turn.origin for turn in self._open.values()}

    def newest_started_by(self, player: str) -> RemoteTurn | None:
        mine = [t for t in self._open.values() if t.player == player]
        return max(mine, key=lambda t: t.order, default=None)

    def snapshot(self, channels: set[str]) -> tuple[list[ServerFrame], list[str]]:
        """For a newcomer here: this node's view of the open turns on `channels` (each
        start and its text so far) and their ids, which the turns' nodes need not send."""
        frames: list[ServerFrame] = []
        ids = []
        for turn in self._open.values():
            if turn.channel in channels and turn.start is not None:
                ids.append(turn.id)
                frames.append(turn.start)
                if turn.chars:
                    frames.append(Delta(turn.id, turn.text, 0))
        return frames, ids

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
        # A say queued there will never start: its speaker is told, as for a queued
        # turn that is interrupted (a turn.end with nothing said).
        for turn_id, (origin, channel) in list(self._queued.items()):
            if origin in origins:
                del self._queued[turn_id]
                self._remember_ended(turn_id)
                self._deliver(channel, TurnEnd(turn_id, "error", 0, 0))
        return ended

    def queued_from(self) -> set[str]:
        """Nodes that hold says queued for sessions here."""
        return {origin for origin, _ in self._queued.values()}

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
