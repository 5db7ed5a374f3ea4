"""The client's protocol state, sans I/O: seq tracking, requests, turns, actions, tools.

`FrameRouter.receive()` takes one decoded server frame and never awaits: it
drops frames already processed (seq), resolves the futures of pending
requests, feeds `Turn`, `Action` and `ToolCall` handles and hands everything
else to the client through callbacks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from npc_client.errors import NpcClientError, error_from_frame
from npc_client.events import Event, ServerNotice, event_from_frame
from npc_client.turns import LOST, Action, ToolCall, Turn

log = logging.getLogger(__name__)

Frame = dict[str, Any]
RequestId = str


@dataclass(slots=True)
class Pending:
    """A request waiting for its `ack`, `error` or `pong`."""

    frame: Frame
    future: asyncio.Future[Frame]
    generation: int = -1  # the connection it was last sent on; -1 not yet sent
    turn: Turn | None = None  # the turn a `say` started


class Requests:
    """Pending requests by id. Ids are unique per client so replies never mix."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(3)
        self._counter = itertools.count(1)
        self._pending: dict[RequestId, Pending] = {}

    def add(self, frame: Frame) -> Pending:
        """Give `frame` a fresh `id` and remember it until it is answered."""
        request_id = f"{self._prefix}-{next(self._counter)}"
        frame["id"] = request_id
        pending = Pending(frame, asyncio.get_running_loop().create_future())
        self._pending[request_id] = pending
        return pending

    def discard(self, request_id: RequestId) -> None:
        self._pending.pop(request_id, None)

    def get(self, request_id: object) -> Pending | None:
        return self._pending.get(request_id) if isinstance(request_id, str) else None

    def resolve(self, request_id: object, frame: Frame) -> bool:
        pending = self.get(request_id)
        if pending is None or pending.future.done():
            return False
        pending.future.set_result(frame)
        return True

    def reject(self, request_id: object, error: BaseException) -> bool:
        pending = self.get(request_id)
        if pending is None or pending.future.done():
            return False
        pending.future.set_exception(error)
        return True

    def sent_before(self, generation: int) -> list[Pending]:
        """Unanswered requests last sent on a connection older than `generation`."""
        return [
            p
            for p in self._pending.values()
            if 0 <= p.generation < generation and not p.future.done()
        ]

    def fail_all(self, error: BaseException) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)


TurnFactory = Callable[[str, bool], Turn]
AnswerAction = Callable[[str, bool], Awaitable[None]]
AnswerTool = Callable[[ToolCall, Any], Awaitable[None]]


async def _no_answer(call: ToolCall, result: Any) -> None:
    raise NpcClientError("this client cannot answer tool calls")


def _nobody() -> str | None:
    return None


class FrameRouter:
    """Routes server frames to request futures, turns, actions and events."""

    def __init__(
        self,
        new_turn: TurnFactory,
        answer: AnswerAction,
        on_turn: Callable[[Turn], None],
        on_event: Callable[[Event], None],
        *,
        answer_tool: AnswerTool = _no_answer,
        on_tool: Callable[[ToolCall], None] | None = None,
        player: Callable[[], str | None] = _nobody,
    ) -> None:
        self._on_turn = on_turn
        self._on_event = on_event
        self._answer_tool = answer_tool
        self._on_tool = on_tool
        self._player = player
        self.requests = Requests()
        self.turns: dict[str, Turn] = {}
        self.actions: dict[str, Action] = {}
        self.calls: dict[str, ToolCall] = {}  # tool calls waiting for their tool.end
        self.last_seq = 0
        self.duplicates = 0
        self.gaps = 0
        self._new_turn = new_turn
        self._answer = answer
        self._by_request: dict[RequestId, Turn] = {}
        self._unconfirmed: set[str] = set()
        self._handlers: dict[str, Callable[[Frame], None]] = {
            "ack": self._ack,
            "pong": self._pong,
            "error": self._error,
            "turn.start": self._turn_start,
            "delta": self._delta,
            "action": self._action,
            "action.end": self._action_end,
            "turn.end": self._turn_end,
            "tool": self._tool,
            "tool.end": self._tool_end,
        }

    def receive(self, frame: Frame) -> None:
        """Process one server frame (not `welcome` or server `ping`)."""
        seq = frame.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            if seq <= self.last_seq:
                self.duplicates += 1
                return
            if seq != self.last_seq + 1:
                self.gaps += 1
                log.warning("seq gap: %d after %d", seq, self.last_seq)
            self.last_seq = seq
        handler = self._handlers.get(str(frame.get("t")))
        if handler is not None:
            handler(frame)
            return
        event = event_from_frame(frame)
        if event is not None:
            self._on_event(event)

    def newest_open_turn(self) -> Turn | None:
        return next((t for t in reversed(self.turns.values()) if not t.ended), None)

    # --- sessions ---------------------------------------------------------

    def new_session(self, seq: int) -> None:
        """`welcome{resumed:false}`: seq starts over and a snapshot follows."""
        self.last_seq = seq
        self._unconfirmed = {tid for tid, t in self.turns.items() if t.started}

    def snapshot_done(self) -> list[Turn]:
        """After a new session's snapshot: end the started turns it did not list."""
        lost = [self.turns[tid] for tid in self._unconfirmed if tid in self.turns]
        self._unconfirmed = set()
        for turn in lost:
            self._end_turn(turn, LOST, turn.received, None, None)
        return lost

    def fail_all(self, error: NpcClientError) -> None:
        """The connection is closed for good: every waiter learns it."""
        self.requests.fail_all(error)
        for turn in self.turns.values():
            turn._fail(error)
        for action in self.actions.values():
            action._fail(error)
        for call in self.calls.values():
            call._fail(error)

    # --- handlers ---------------------------------------------------------

    def _ack(self, frame: Frame) -> None:
        request_id = frame.get("id")
        turn_id = frame.get("turn")
        pending = self.requests.get(request_id)
        if isinstance(turn_id, str) and pending is not None and isinstance(request_id, str):
            turn = self.turns.get(turn_id) or self._open_turn(turn_id, mine=True)
            queued = frame.get("queued")
            turn.queued = queued if isinstance(queued, int) else None
            self._by_request[request_id] = turn
            pending.turn = turn
        self.requests.resolve(request_id, frame)

    def _pong(self, frame: Frame) -> None:
        self.requests.resolve(frame.get("id"), frame)

    def _error(self, frame: Frame) -> None:
        error = error_from_frame(frame)
        request_id = frame.get("id")
        if self.requests.reject(request_id, error):
            return
        turn = self._by_request.get(request_id) if isinstance(request_id, str) else None
        if turn is not None:
            turn.error = error  # e.g. backend_error; its turn.end (reason error) follows
            return
        self._on_event(ServerNotice(error))

    def _open_turn(self, turn_id: str, *, mine: bool) -> Turn:
        turn = self._new_turn(turn_id, mine)
        self.turns[turn_id] = turn
        return turn

    def _turn_start(self, frame: Frame) -> None:
        turn_id = str(frame.get("turn"))
        self._unconfirmed.discard(turn_id)
        turn = self.turns.get(turn_id)
        created = turn is None
        if turn is None:
            turn = self._adopt(turn_id, frame.get("reply_to"))
        turn._feed_start(frame)
        if created and not turn.mine:
            self._on_turn(turn)

    def _adopt(self, turn_id: str, reply_to: object) -> Turn:
        # A say whose ack was lost with a replaced session shows up in the
        # snapshot as a turn replying to its id: it is ours after all.
        pending = self.requests.get(reply_to)
        if pending is None or pending.frame.get("t") != "say" or not isinstance(reply_to, str):
            return self._open_turn(turn_id, mine=False)
        turn = self._open_turn(turn_id, mine=True)
        self._by_request[reply_to] = turn
        pending.turn = turn
        self.requests.resolve(reply_to, {"t": "ack", "id": reply_to, "turn": turn_id})
        return turn

    def _delta(self, frame: Frame) -> None:
        turn = self.turns.get(str(frame.get("turn")))
        text, at = frame.get("text"), frame.get("at")
        if turn is not None and isinstance(text, str) and isinstance(at, int):
            turn._feed_text(text, at)

    def _action(self, frame: Frame) -> None:
        turn = self.turns.get(str(frame.get("turn")))
        if turn is None or not isinstance(frame.get("action"), str):
            return
        action = Action(frame, self._answer)
        self.actions[action.id] = action
        turn._feed_action(action)

    def _action_end(self, frame: Frame) -> None:
        action = self.actions.pop(str(frame.get("action")), None)
        if action is not None:
            action._settle(str(frame.get("status")))

    def _tool(self, frame: Frame) -> None:
        turn = self.turns.get(str(frame.get("turn")))
        if turn is None or not isinstance(frame.get("call"), str):
            return
        me = self._player()
        # Only the turn's speaker may answer a client tool (anyone else: unknown_call).
        for_me = frame.get("answered_by") == "client" and bool(me) and turn.player == me
        call = ToolCall(frame, for_me=for_me, answer=self._answer_tool)
        self.calls[call.id] = call
        turn._feed_tool(call)
        if self._on_tool is not None:
            self._on_tool(call)

    def _tool_end(self, frame: Frame) -> None:
        call = self.calls.pop(str(frame.get("call")), None)
        if call is not None:
            call._settle(str(frame.get("status")))

    def _turn_end(self, frame: Frame) -> None:
        turn = self.turns.get(str(frame.get("turn")))
        if turn is None:
            return
        chars, kept = frame.get("chars"), frame.get("kept")
        self._end_turn(
            turn,
            str(frame.get("reason")),
            chars if isinstance(chars, int) else turn.received,
            kept if isinstance(kept, int) else None,
            frame.get("usage"),
        )

    def _end_turn(
        self, turn: Turn, reason: str, chars: int, kept: int | None, usage: Mapping[str, Any] | None
    ) -> None:
        turn._feed_end(reason, chars, kept, usage)
        self.turns.pop(turn.id, None)
        for call in turn.tool_calls:  # tool.end comes before turn.end; a lost turn's may not
            if self.calls.pop(call.id, None) is not None:
                call._settle(LOST)
        for request_id in [r for r, t in self._by_request.items() if t is turn]:
            del self._by_request[request_id]
