"""NPC turns: one active turn per NPC and audience, interrupts, memory cuts.

A `Conversation` is the turn runner of one NPC with one audience (a player,
or a room). It starts a generation task per turn, streams its pieces to the
audience through its `Publisher`, and ends turns synchronously: an interrupt
cancels the task, drops queued deltas and sends `turn.end` before returning,
so no delta of the turn can follow it. The NPC remembers only what the
audience could have seen: text written to a socket, cut to `shown`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable

from npc_server.backends.base import (
    ActionPiece,
    Backend,
    DeliveringBackend,
    GenerationError,
    GenerationRequest,
    MemoryEntry,
    TextPiece,
    ToolCallPiece,
    UsagePiece,
)
from npc_server.brokers.base import player_channel
from npc_server.events import BackendFailed, EventBus, TurnEnded, TurnStarted
from npc_server.memories import MemoryStore
from npc_server.memory import ConversationMemory
from npc_server.npcs import BusyPolicy, NpcConfig, RoomInterrupt
from npc_server.protocol.codes import ErrorCode
from npc_server.protocol.frames import (
    Action,
    ActionEnd,
    Delta,
    Error,
    RequestId,
    ToolEnd,
    TurnEnd,
    TurnStart,
)
from npc_server.turn import (
    GAME,
    ActionNotice,
    Audience,
    EndReason,
    GenerationLimiter,
    NoIndex,
    Publisher,
    Refused,
    RequestFactory,
    Scheduler,
    Started,
    Timer,
    TokenMeter,
    ToolAsker,
    Turn,
    TurnAction,
    TurnIndex,
    TurnState,
    game_line,
)

__all__ = [
    "GAME",
    "ActionNotice",
    "Audience",
    "Conversation",
    "EndReason",
    "GenerationLimiter",
    "NoIndex",
    "Publisher",
    "Refused",
    "RequestFactory",
    "Scheduler",
    "Started",
    "Timer",
    "TokenMeter",
    "ToolAsker",
    "Turn",
    "TurnAction",
    "TurnIndex",
    "TurnState",
    "game_line",
]

log = logging.getLogger(__name__)

RECALL_TIMEOUT = 5.0  # a store that does not answer: the turn goes on without memory


_ACTIVE = TurnState.ACTIVE


class _Feed:
    """One turn's pieces into its conversation: the `take` a backend calls per piece.

    A bound method rather than a `functools.partial` (the interpreter inlines a
    call of a bound Python method; a partial re-enters it from C), with the
    delta's lookups made once per turn: this runs for every token.
    """

    __slots__ = ("channel", "conversation", "meter", "publish", "turn")

    def __init__(self, conversation: Conversation, turn: Turn) -> None:
        self.conversation = conversation
        self.turn = turn
        self.channel = conversation.channel
        self.publish = conversation.publisher.publish_nowait
        self.meter = conversation.meter

    def take(self, piece: object) -> None:
        turn = self.turn
        if turn.state is not _ACTIVE:
            return
        if not isinstance(piece, TextPiece):
            self.conversation._take_other(turn, piece)
            return
        text = piece.text
        if not text:
            return
        at = turn.chars
        if not at:
            turn.first_delta_at = self.conversation.clock()
        turn.parts.append(text)
        turn.chars = at + len(text)
        self.publish(self.channel, Delta(turn.id, text, at))
        if self.meter is not None:
            self.meter.spend_nowait(turn.player, 1)

    def finished(self) -> None:
        """The reply is complete (see `Conversation._finished`)."""
        self.conversation._finished(self.turn)


class Conversation:
    """The turn runner of one NPC with one audience."""

    def __init__(
        self,
        npc: NpcConfig,
        audience: Audience,
        *,
        backend: Backend,
        publisher: Publisher,
        limiter: GenerationLimiter,
        scheduler: Scheduler,
        make_request: RequestFactory,
        new_id: Callable[[str], str],
        index: TurnIndex | None = None,
        meter: TokenMeter | None = None,
        events: EventBus | None = None,
        clock: Callable[[], float] = time.monotonic,
        turn_timeout: float = 120.0,
        on_action: Callable[[ActionNotice], None] | None = None,
        tools: ToolAsker | None = None,
        memories: MemoryStore | None = None,
    ) -> None:
        self.npc = npc
        self.audience = audience
        self.channel = audience.key
        self.backend = backend
        # Checked once: isinstance against a runtime-checkable protocol walks its members.
        self._deliverer = backend if isinstance(backend, DeliveringBackend) else None
        self.publisher = publisher
        self.limiter = limiter
        self.scheduler = scheduler
        self.make_request = make_request
        self.new_id = new_id
        self.index: TurnIndex = index or NoIndex()
        self.meter = meter
        self.events = events or EventBus()
        self.clock = clock
        self.open_actions = 0
        self.turn_timeout = turn_timeout
        self.on_action = on_action
        self.tools = tools
        # Without a store, memory lives and dies with the conversation (and no turn waits).
        self.memories = memories
        self._recalled = memories is None
        self._recalling: asyncio.Task[None] | None = None
        self._greet = self._requested = False
        self.memory = ConversationMemory(npc.memory_chars, self._memory_changed)
        self.active: Turn | None = None
        self.waiting: deque[Turn] = deque()

    @property
    def idle(self) -> bool:
        return self.active is None and not self.waiting

    def submit(
        self,
        player: str,
        text: str,
        reply_to: RequestId,
        accepted: Callable[[Started], None] = lambda started: None,
        *,
        caused_by: str | None = None,
        event: str | None = None,
    ) -> Started:
        """Start a turn answering `text`, or queue it / supersede per the busy policy.

        `accepted` runs once the say is accepted and before any frame of the
        turn is sent, so the speaker's `ack` comes before `turn.start`.
        """
        turn = Turn(self.new_id("t"), self.npc.id, player, text, self.audience.room, reply_to)
        turn.caused_by, turn.event = caused_by, event
        if self.active is None:
            self._acquire_slot()
            started = self._accept(Started(turn, None), accepted)
            self._start(turn)
        elif self.supersedes and self._may_cut(self.active, turn):
            started = self._accept(Started(turn, None), accepted)
            self._end(self.active, EndReason.SUPERSEDED, keep_slot=True)
            self._start(turn)
        elif len(self.waiting) >= self.npc.max_queue:
            raise Refused(
                ErrorCode.BUSY, f"{self.npc.id} already has {len(self.waiting)} says waiting", 1.0
            )
        else:
            self.waiting.append(turn)
            started = self._accept(Started(turn, len(self.waiting)), accepted)
        return started

    @property
    def supersedes(self) -> bool:
        """Whether a say now would end the active turn instead of waiting for it."""
        return self.npc.busy is BusyPolicy.INTERRUPT and self.npc.interruptible

    def _may_cut(self, active: Turn, turn: Turn) -> bool:
        """Whether `turn`'s say may supersede `active`: in a room where only the speaker
        may interrupt, another member's say waits in line instead (as under `busy =
        "queue"`), or a say would be an interrupt the rule refuses. The game's own says
        (`caused_by`) are trusted, as its interrupts are."""
        return (
            turn.room is None
            or turn.caused_by is not None
            or self.npc.room_interrupt is RoomInterrupt.ANYONE
            or active.speaker_is(turn.player)
        )

    def _accept(self, started: Started, accepted: Callable[[Started], None]) -> Started:
        self.index.turn_added(self, started.turn)
        accepted(started)
        return started

    def _acquire_slot(self) -> None:
        if not self.limiter.try_acquire_nowait():
            raise Refused(
                ErrorCode.BUSY,
                f"the server is at its limit of {self.limiter.limit} generations",
                1.0,
            )

    def _start(self, turn: Turn) -> None:
        turn.state = TurnState.ACTIVE
        turn.started_at = self.clock()
        self.active = turn
        self.events.emit(TurnStarted(turn.id, self.npc.id, turn.player, turn.room))
        if turn.caused_by is None:
            self.memory.add(MemoryEntry("player", turn.player, turn.text_in))
        else:
            self.memory.add(
                MemoryEntry("player", turn.caused_by, game_line(turn.event, turn.text_in))
            )
        start = TurnStart(
            turn.id, self.npc.id, turn.player, turn.room, turn.reply_to, turn.caused_by, turn.event
        )
        self.publisher.publish_nowait(self.channel, start)
        run = self._run(turn, self._request(turn)) if self._recalled else self._run_recalled(turn)
        turn.task = asyncio.get_running_loop().create_task(run, name=f"turn-{turn.id}")

    async def _run(self, turn: Turn, request: GenerationRequest) -> None:
        reason = EndReason.DONE
        try:
            async with asyncio.timeout(self.turn_timeout):
                if (deliverer := self._deliverer) is not None:
                    # Pieces handed over from the backend's timer, no task step per token;
                    # the turn ends in the callback of its last piece (see `_finished`).
                    feed = _Feed(self, turn)
                    async for call in deliverer.deliver(request, feed.take, feed.finished):
                        await self._ask_tool(turn, call)
                else:
                    take = _Feed(self, turn).take
                    async for piece in self.backend.generate(request):
                        if isinstance(piece, ToolCallPiece):
                            await self._ask_tool(turn, piece)
                        else:
                            take(piece)
        except GenerationError as exc:
            reason = EndReason(exc.reason)
            self._report(turn, reason, exc.message)
        except TimeoutError:
            reason = EndReason.TIMEOUT
            self._report(turn, reason, f"the reply took longer than {self.turn_timeout:g} s")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("backend %s failed in turn %s", self.npc.backend, turn.id)
            reason = EndReason.ERROR
            self._report(turn, reason, "the NPC's generator failed")
        if turn.state is TurnState.ACTIVE:
            self._end(turn, reason)

    def _finished(self, turn: Turn) -> None:
        """The reply is complete: end the turn now, from the backend's timer.

        Its `turn.end` is then queued in the same callback as its last delta, so
        both go out in one socket write; waiting for the task's next step would
        cost a write of its own. The task has nothing left to do but return.
        """
        if turn.state is TurnState.ACTIVE:
            self._end(turn, EndReason.DONE, cancel=False)

    def _take_other(self, turn: Turn, piece: object) -> None:
        """A piece that is not text (`_Feed.take` has the text)."""
        if isinstance(piece, ActionPiece):
            self._act(turn, piece)
        elif isinstance(piece, UsagePiece):
            turn.usage = {"prompt": piece.prompt_tokens, "completion": piece.completion_tokens}

    def _act(self, turn: Turn, piece: ActionPiece) -> None:
        spec = self.npc.action(piece.name)
        if spec is None:
            log.warning("NPC %s emitted unknown action %r; skipped", self.npc.id, piece.name)
            return
        action = TurnAction(
            self.new_id("a"), spec.name, dict(piece.args), turn.chars, spec.approval, spec.timeout_s
        )
        turn.actions.append(action)
        self.open_actions += 1
        self.index.action_opened(self, turn, action)
        frame = Action(turn.id, action.id, action.name, action.args, action.at, action.approval)
        self.publisher.publish_nowait(self.channel, frame)
        self._notify(turn, action, "taken")

    def _report(self, turn: Turn, reason: EndReason, message: str) -> None:
        if turn.state is not TurnState.ACTIVE:
            return  # ended meanwhile (its timeout fired after `_finished`): nothing failed
        failed = BackendFailed(self.npc.id, self.npc.backend, turn.id, reason.value, message)
        self.events.emit(failed)
        error = Error(code=ErrorCode.BACKEND_ERROR, message=message, id=turn.reply_to)
        self.publisher.publish_nowait(player_channel(turn.player), error)

    def interrupt(self, turn: Turn, shown: int | None) -> None:
        """Stop a turn now: no delta of it reaches any socket after its `turn.end`."""
        if turn.state is TurnState.QUEUED:
            # It never started: tell the audience it is gone, so no client waits for it.
            self.waiting.remove(turn)
            turn.state = TurnState.ENDED
            turn.kept = 0
            end = TurnEnd(turn.id, EndReason.INTERRUPTED.value, 0, 0)
            self.publisher.publish_nowait(self.channel, end)
            self.index.turn_ended(turn)
            return
        turn.interrupted_at = self.clock()
        if shown is not None:
            turn.shown = shown
        self._end(turn, EndReason.INTERRUPTED)

    def _end(
        self, turn: Turn, reason: EndReason, *, keep_slot: bool = False, cancel: bool = True
    ) -> None:
        turn.state = TurnState.ENDED
        cut = reason in (EndReason.INTERRUPTED, EndReason.SUPERSEDED)
        if cancel and turn.task is not None and turn.task is not asyncio.current_task():
            turn.task.cancel()
        if cut:
            self.publisher.drop_turn_nowait(self.channel, turn.id)
        if turn.pending_call is not None:  # its task is cancelled above: the call with it
            self.publisher.publish_nowait(
                self.channel, ToolEnd(turn.pending_call, "cancelled", turn.id)
            )
            turn.pending_call = None
        turn.kept = self._kept(turn, cut)
        self.memory.add(MemoryEntry("npc", self.npc.id, turn.text[: turn.kept]))
        self._settle_actions(turn)
        end = TurnEnd(turn.id, reason.value, turn.chars, turn.kept, turn.usage)
        self.publisher.publish_nowait(self.channel, end)
        self.active = None
        self.index.turn_ended(turn)
        if self.events.listened:
            self.events.emit(self._ended(turn, reason))
        if keep_slot:
            return
        if self.waiting:
            self._start(self.waiting.popleft())
        else:
            self.limiter.release()

    def _ended(self, turn: Turn, reason: EndReason) -> TurnEnded:
        now = self.clock()
        started = turn.started_at if turn.started_at is not None else now
        first = turn.first_delta_at
        interrupted = turn.interrupted_at
        return TurnEnded(
            turn.id,
            self.npc.id,
            turn.player,
            turn.room,
            reason.value,
            turn.chars,
            turn.kept or 0,
            None if first is None else first - started,
            now - started,
            None if interrupted is None else now - interrupted,
            len(turn.parts),
        )

    @staticmethod
    def _kept(turn: Turn, cut: bool) -> int:
        """What the NPC remembers saying.

        A turn that ran to its end reaches the player whole (queued text is never
        dropped), so `seen` reports, which lag behind the display, do not cut it.
        A cut turn keeps what was written to a socket, and no more than `shown`.
        """
        if not cut:
            return turn.chars
        kept = min(turn.written, turn.chars)
        return kept if turn.shown is None else min(kept, turn.shown)

    def _settle_actions(self, turn: Turn) -> None:
        assert turn.kept is not None
        for action in turn.actions:
            if action.status is not None:
                continue
            if action.at > turn.kept:
                self._resolve(turn, action, "retracted")
            elif not action.approval:
                self._resolve(turn, action, "done")
            else:
                expire = lambda a=action: self._resolve(turn, a, "expired")  # noqa: E731
                action.timer = self.scheduler.call_later(action.timeout_s, expire)

    def answer(self, turn: Turn, action: TurnAction, accept: bool, by: str | None = None) -> None:
        """A player (`by`) answered an action that asked for approval."""
        self._resolve(turn, action, "accepted" if accept else "declined", by)

    def expire(self, turn: Turn, action: TurnAction) -> None:
        """End an action waiting for approval now, as its timeout would (the node stops)."""
        self._resolve(turn, action, "expired")

    def _resolve(self, turn: Turn, action: TurnAction, status: str, by: str | None = None) -> None:
        if action.status is not None:
            return
        action.status = status
        if action.timer is not None:
            action.timer.cancel()
        self.open_actions -= 1
        self.publisher.publish_nowait(self.channel, ActionEnd(action.id, status, turn.id))
        self.index.action_resolved(action)
        self._notify(turn, action, status, by)

    async def aclose(self) -> None:
        """Cancel everything this conversation runs (server shutdown)."""
        tasks = [t.task for t in (self.active,) if t is not None and t.task is not None]
        self.waiting.clear()
        if self.active is not None:
            self._end(self.active, EndReason.INTERRUPTED)
        if self._recalling is not None and not self._recalling.done():
            self._recalling.cancel()
            tasks.append(self._recalling)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.memories is not None:  # what the cut turns leave is written before the exit
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.memories.flush()

    # --- the game server: action notices --------------------------------------

    def _notify(self, turn: Turn, action: TurnAction, status: str, by: str | None = None) -> None:
        """Tell the game server's webhook sender (never waits, never raises into a turn)."""
        if self.on_action is None:
            return
        notice = ActionNotice(
            status,
            action.id,
            action.name,
            action.args,
            action.approval,
            action.at,
            turn.id,
            self.npc.id,
            turn.player,
            turn.room,
            by,
        )
        try:
            self.on_action(notice)
        except Exception:
            log.exception("the action listener failed on %s of %s", status, action.id)

    # --- tools: the reply waits for an answer -----------------------------------

    async def _ask_tool(self, turn: Turn, piece: ToolCallPiece) -> None:
        """Pause the reply for one tool call; without a tool runner it answers `error`."""
        if turn.state is TurnState.ACTIVE and self.tools is not None:
            await self.tools.run_call(self, turn, piece)

    # --- memory beyond this conversation: the store -----------------------------

    def _request(self, turn: Turn) -> GenerationRequest:
        """The turn's request: history without its own line; `returning` on the first."""
        request = self.make_request(turn, self.memory.lines()[:-1])
        self._requested = True
        if self._greet:
            self._greet = False
            request = dataclasses.replace(request, returning=True)
        return request

    async def _run_recalled(self, turn: Turn) -> None:
        """A turn that came before the memory of earlier conversations: load it first."""
        await self._recall()
        if turn.state is TurnState.ACTIVE:
            await self._run(turn, self._request(turn))

    async def _recall(self) -> None:
        # One load for the conversation (again only after a failed one); shielded,
        # so a turn interrupted meanwhile leaves it to the next turn.
        if self._recalling is None or (self._recalling.done() and not self._recalled):
            self._recalling = asyncio.get_running_loop().create_task(
                self._load(), name=f"recall-{self.npc.id}-{self.channel}"
            )
        await asyncio.shield(self._recalling)

    async def _load(self) -> None:
        assert self.memories is not None
        lines = None
        try:
            async with asyncio.timeout(RECALL_TIMEOUT):
                lines = await self.memories.load(self.npc.id, self.channel)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning(
                "%s starts without its memory of %s", self.npc.id, self.channel, exc_info=True
            )
        if lines is None:
            return  # the store said why; nothing is saved over what it could not read
        self._recalled = True
        self._greet = bool(lines) and not self._requested
        self.memory.restore(lines)
        if len(self.memory):
            self.memories.save_nowait(self.npc.id, self.channel, self.memory.stored())

    def _memory_changed(self) -> None:
        if self._recalled and self.memories is not None:
            self.memories.save_nowait(self.npc.id, self.channel, self.memory.stored())
