"""The turns and actions of this node, by id: one owner, reached through methods.

Conversations report what they start and end (`TurnIndex`); handlers look
turns and actions up here, never in a conversation's own state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from npc_server.turns import Conversation, Turn, TurnAction

from npc_server.protocol.frames import Delta, ServerFrame
from npc_server.turns import TurnState


class TurnRegistry:
    """Queued and active turns and open actions, with a per-player index."""

    def __init__(self, on_released: Callable[[Conversation], None]) -> None:
        # Called when a conversation no longer holds a turn or an action here.
        self._on_released = on_released
        self._turns: dict[str, tuple[Conversation, Turn]] = {}
        self._by_player: dict[str, dict[str, Turn]] = {}
        self._actions: dict[str, tuple[Conversation, Turn, TurnAction]] = {}

    # --- TurnIndex: what conversations report -------------------------------

    def turn_added(self, conversation: Conversation, turn: Turn) -> None:
        self._turns[turn.id] = (conversation, turn)
        self._by_player.setdefault(turn.player, {})[turn.id] = turn

    def turn_ended(self, turn: Turn) -> None:
        entry = self._turns.pop(turn.id, None)
        if entry is None:
            return
        mine = self._by_player[turn.player]
        del mine[turn.id]
        if not mine:
            del self._by_player[turn.player]
        self._on_released(entry[0])

    def action_opened(self, conversation: Conversation, turn: Turn, action: TurnAction) -> None:
        self._actions[action.id] = (conversation, turn, action)

    def action_resolved(self, action: TurnAction) -> None:
        entry = self._actions.pop(action.id, None)
        if entry is not None:
            self._on_released(entry[0])

    # --- look-ups -----------------------------------------------------------

    def get(self, turn_id: str) -> tuple[Conversation, Turn] | None:
        return self._turns.get(turn_id)

    def note_written(self, frame: ServerFrame) -> None:
        """A session wrote `frame`: a delta moves its turn's `written` (a session's
        `on_written`, called once per written frame)."""
        if isinstance(frame, Delta):
            entry = self._turns.get(frame.turn)
            if entry is not None:
                entry[1].note_written(frame.at + len(frame.text))

    def newest_started_by(self, player: str) -> tuple[Conversation, Turn] | None:
        """The newest active turn that `player` started (a bare interrupt's target)."""
        for turn in reversed(self._by_player.get(player, {}).values()):
            if turn.state is TurnState.ACTIVE:
                return self._turns[turn.id]
        return None

    def count_started_by(self, player: str) -> int:
        """How many turns `player` has queued or generating, over every conversation."""
        return len(self._by_player.get(player, ()))

    def active(self) -> Iterator[tuple[Conversation, Turn]]:
        """Active turns, oldest first (a snapshot's order)."""
        for conversation, turn in list(self._turns.values()):
            if turn.state is TurnState.ACTIVE:
                yield conversation, turn

    def tasks(self) -> list[asyncio.Task[None]]:
        return [turn.task for _, turn in self._turns.values() if turn.task is not None]

    def action(self, action_id: str) -> tuple[Conversation, Turn, TurnAction] | None:
        return self._actions.get(action_id)

    def open_actions(self) -> list[tuple[Conversation, Turn, TurnAction]]:
        return list(self._actions.values())

    def expire_waiting_nowait(self) -> int:
        """End as `expired` each action waiting for the player's approval after its turn
        (the node stops for good: no other node takes its actions over, so none could be
        answered); how many. Those of turns still generating are left to their turn's end."""
        waiting = [
            (conversation, turn, action)
            for conversation, turn, action in self._actions.values()
            if action.approval and turn.state is TurnState.ENDED
        ]
        for conversation, turn, action in waiting:
            conversation.expire(turn, action)
        return len(waiting)

    @property
    def turn_count(self) -> int:
        return len(self._turns)

    @property
    def action_count(self) -> int:
        return len(self._actions)
