"""A turn whose start never reached this node is caught up from the node that runs it.

A node relays another node's turn only from its `turn.start`: a delta of a turn
it never saw start is dropped (see `remote_turns`). That happens when a session
here subscribed the turn's channel just as the turn began: its node published
the start before it knew this node listened (brokers publish only where another
node has announced interest), or before Redis applied the subscription. So on
the first such frame this node asks the turn's node (`turn.catch-up`) for the
turn as a newcomer gets it, its start and its text so far, and delivers that
here (`turn.frames`). The answer is published after every delta counted in it,
and the deltas after it arrive after it, so nothing is lost or shown twice.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from npc_server.brokers import wire

if TYPE_CHECKING:
    from npc_server.brokers.redis import RedisBroker
    from npc_server.cluster.remote_turns import RemoteTurns
    from npc_server.node import Node

log = logging.getLogger(__name__)

ASKED_REMEMBERED = 10_000  # turns asked about: one question per turn
MAX_FRAMES = 64  # a turn's start, its text and its open actions


class LateStarts:
    """Both sides of `turn.catch-up` for one node."""

    def __init__(self, node: Node, broker: RedisBroker, remote: RemoteTurns) -> None:
        self.node = node
        self.broker = broker
        self.remote = remote
        self.asked = self.answered = self.rejected = 0
        self._asked: set[str] = set()
        self._asked_order: deque[str] = deque()
        broker.on_message("turn.catch-up", self._on_ask)
        broker.on_message("turn.frames", self._on_frames)

    def missing(self, origin: str, channel: str, turn: str) -> None:
        """A frame of `turn` from `origin` came on `channel` before its start: ask once."""
        if turn in self._asked:
            return
        self._asked.add(turn)
        self._asked_order.append(turn)
        if len(self._asked_order) > ASKED_REMEMBERED:
            self._asked.discard(self._asked_order.popleft())
        self.asked += 1
        self.broker.send_nowait(origin, {"k": "turn.catch-up", "turn": turn, "channel": channel})

    def _on_ask(self, origin: str, message: dict[str, Any]) -> None:
        turn_id, channel = message.get("turn"), message.get("channel")
        if not isinstance(turn_id, str) or not isinstance(channel, str):
            self._reject(origin, "turn and channel must be strings")
            return
        entry = self.node.turns.get(turn_id)
        if entry is None:
            return  # it ended meanwhile: its turn.end is on its way
        conversation, _ = entry
        audience = conversation.audience
        if audience.key != channel:
            self._reject(origin, f"turn {turn_id} is not on {channel}")
            return
        snapshot = self.node.audience_snapshot(audience)
        frames = [f for f in snapshot if getattr(f, "turn", None) == turn_id]
        bodies = [wire.frame_body(frame) for frame in frames[:MAX_FRAMES]]
        self.answered += 1
        self.broker.send_nowait(origin, {"k": "turn.frames", "channel": channel, "frames": bodies})

    def _on_frames(self, origin: str, message: dict[str, Any]) -> None:
        channel, bodies = message.get("channel"), message.get("frames")
        if not isinstance(channel, str) or not isinstance(bodies, list):
            self._reject(origin, "channel must be a string and frames a list")
            return
        if not all(isinstance(body, dict) for body in bodies):
            self._reject(origin, "each frame must be a map")
            return
        try:
            frames = [wire.decode_frame(body) for body in bodies[:MAX_FRAMES]]
        except wire.WireError as exc:
            self._reject(origin, str(exc))
            return
        for frame in self.remote.caught_up(origin, channel, frames):
            self.broker.deliver_local_nowait(channel, frame)

    def _reject(self, origin: str, why: str) -> None:
        self.rejected += 1
        log.warning("dropped a turn catch-up message from node %s: %s", origin, why)
