"""The turn runner: interrupts, busy policies, memory cut to what was seen, actions."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest

from npc_server.backends.base import (
    ActionPiece,
    GenerationError,
    GenerationRequest,
    MemoryEntry,
    Piece,
    TextPiece,
    UsagePiece,
)
from npc_server.npcs import ActionSpec, BusyPolicy, NpcConfig, RoomInterrupt
from npc_server.protocol.codes import ErrorCode
from npc_server.protocol.frames import (
    Action,
    ActionEnd,
    Delta,
    Error,
    ServerFrame,
    TurnEnd,
    TurnStart,
)
from npc_server.turns import (
    Audience,
    Conversation,
    EndReason,
    GenerationLimiter,
    Refused,
    Turn,
    TurnState,
)

END = None
WAIT = 5.0


class PuppetBackend:
    """Yields exactly what the test feeds it, per utterance; records cancellation."""

    def __init__(self) -> None:
        self.streams: dict[str, asyncio.Queue[Piece | BaseException | None]] = {}
        self.cancelled: list[str] = []
        self.requests: list[GenerationRequest] = []

    def feed(self, text_in: str, *items: Piece | BaseException | None) -> None:
        stream = self.streams.setdefault(text_in, asyncio.Queue())
        for item in items:
            stream.put_nowait(item)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        self.requests.append(request)
        stream = self.streams.setdefault(request.text, asyncio.Queue())
        try:
            while (item := await stream.get()) is not END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        except asyncio.CancelledError:
            self.cancelled.append(request.text)
            raise

    async def aclose(self) -> None:
        return None


class RecordingDelivery:
    """A `Publisher` that records frames in publish order: the audience's, and errors apart."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.frames: list[ServerFrame] = []
        self.to_player: list[tuple[str, ServerFrame]] = []
        self.changed = asyncio.Event()

    def publish_nowait(self, channel: str, frame: ServerFrame, exclude: str | None = None) -> None:
        if isinstance(frame, Error):
            self.to_player.append((channel.removeprefix("player:"), frame))
        else:
            assert channel == self.channel, f"published on {channel}, not the audience's"
            self.frames.append(frame)
        self.changed.set()

    def drop_turn_nowait(self, channel: str, turn: str) -> None:
        return None

    async def wait_for(self, ready: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not ready():
                self.changed.clear()
                await self.changed.wait()

    def of(self, kind: type[ServerFrame]) -> list[ServerFrame]:
        return [f for f in self.frames if isinstance(f, kind)]


class FakeTimer:
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeScheduler:
    def __init__(self) -> None:
        self.timers: list[tuple[float, FakeTimer]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(callback)
        self.timers.append((delay, timer))
        return timer

    def fire_all(self) -> None:
        for _, timer in self.timers:
            if not timer.cancelled:
                timer.callback()


NPC = NpcConfig(
    id="mira",
    name="Mira",
    actions=(ActionSpec("wave"), ActionSpec("open_shop", approval=True, timeout_s=30)),
    memory_chars=1000,
)


class Rig:
    def __init__(
        self, npc: NpcConfig = NPC, limit: int = 10, audience: Audience | None = None
    ) -> None:
        self.backend = PuppetBackend()
        audience = audience or Audience(player="alice")
        self.delivery = RecordingDelivery(audience.key)
        self.limiter = GenerationLimiter(limit)
        self.scheduler = FakeScheduler()
        ids = itertools.count(1)
        self.conversation = Conversation(
            npc,
            audience,
            backend=self.backend,
            publisher=self.delivery,
            limiter=self.limiter,
            scheduler=self.scheduler,
            make_request=lambda turn, history: GenerationRequest(
                npc, turn.player, turn.text_in, history
            ),
            new_id=lambda prefix: f"{prefix}{next(ids)}",
        )

    def say(self, text: str) -> Turn:
        return self.conversation.submit("alice", text, reply_to=1).turn

    async def stream(self, turn: Turn, *pieces: Piece) -> None:
        self.backend.feed(turn.text_in, *pieces)
        expected = len(self.delivery.frames) + len(pieces)
        await self.delivery.wait_for(lambda: len(self.delivery.frames) >= expected)

    async def finished(self, turn: Turn) -> TurnEnd:
        await self.delivery.wait_for(lambda: turn.state is TurnState.ENDED)
        [end] = [
            f for f in self.delivery.of(TurnEnd) if isinstance(f, TurnEnd) and f.turn == turn.id
        ]
        return end


async def test_a_turn_streams_and_ends_done() -> None:
    """Text pieces become deltas with offsets; the NPC remembers all of a finished turn."""
    rig = Rig()
    turn = rig.say("hello")
    await rig.stream(turn, TextPiece("Hi "), TextPiece("there"))
    rig.backend.feed("hello", UsagePiece(5, 2), END)
    end = await rig.finished(turn)
    assert rig.delivery.frames[0] == TurnStart(turn.id, "mira", "alice", None, 1)
    assert rig.delivery.of(Delta) == [Delta(turn.id, "Hi ", 0), Delta(turn.id, "there", 3)]
    assert (end.reason, end.chars, end.kept, end.usage) == (
        "done",
        8,
        8,
        {"prompt": 5, "completion": 2},
    )
    assert rig.conversation.memory.lines() == (
        MemoryEntry("player", "alice", "hello"),
        MemoryEntry("npc", "mira", "Hi there"),
    )
    assert rig.limiter.active == 0 and rig.conversation.idle


async def test_interrupt_stops_at_once_and_keeps_only_written_text() -> None:
    """After interrupt no delta follows turn.end, the task is cancelled, kept = written."""
    rig = Rig()
    turn = rig.say("tell me")
    await rig.stream(turn, TextPiece("One two "), TextPiece("three four"))
    turn.note_written(8)  # the socket was handed "One two " only
    rig.conversation.interrupt(turn, shown=None)
    rig.backend.feed("tell me", TextPiece("five"), END)
    end = await rig.finished(turn)
    await asyncio.sleep(0)  # let the cancelled task unwind
    assert rig.delivery.frames[-1] == end
    assert (end.reason, end.chars, end.kept) == ("interrupted", 18, 8)
    assert rig.backend.cancelled == ["tell me"]
    assert turn.task is not None and turn.task.cancelled()
    assert rig.conversation.memory.lines()[-1] == MemoryEntry("npc", "mira", "One two ")
    assert rig.limiter.active == 0 and rig.conversation.active is None


async def test_interrupt_shown_cuts_memory_further() -> None:
    """interrupt.shown below what was written is what the NPC remembers."""
    rig = Rig()
    turn = rig.say("x")
    await rig.stream(turn, TextPiece("abcdefghij"))
    turn.note_written(10)
    rig.conversation.interrupt(turn, shown=4)
    end = await rig.finished(turn)
    assert end.kept == 4
    assert rig.conversation.memory.lines()[-1].text == "abcd"


async def test_latest_seen_cuts_memory_when_interrupt_has_no_shown() -> None:
    """Without interrupt.shown the latest seen report is the cut."""
    rig = Rig()
    turn = rig.say("x")
    await rig.stream(turn, TextPiece("abcdefghij"))
    turn.note_written(10)
    turn.shown = 6
    rig.conversation.interrupt(turn, shown=None)
    assert (await rig.finished(turn)).kept == 6


async def test_seen_does_not_cut_a_turn_that_finished() -> None:
    """A done turn is remembered whole even if the last seen report lagged behind."""
    rig = Rig()
    turn = rig.say("x")
    await rig.stream(turn, TextPiece("abcdefghij"))
    turn.shown = 3
    rig.backend.feed("x", END)
    end = await rig.finished(turn)
    assert (end.chars, end.kept) == (10, 10)
    assert rig.conversation.memory.lines()[-1].text == "abcdefghij"


async def test_interrupt_before_any_text_keeps_nothing() -> None:
    """A turn cut before its first piece ends with chars 0, kept 0, and no NPC memory line."""
    rig = Rig()
    turn = rig.say("quick")
    await asyncio.sleep(0)
    rig.conversation.interrupt(turn, shown=None)
    end = await rig.finished(turn)
    assert (end.chars, end.kept) == (0, 0)
    assert [e.role for e in rig.conversation.memory.lines()] == ["player"]


async def test_interrupt_while_the_backend_is_mid_await() -> None:
    """Cancelling never lets a piece produced later reach the audience."""
    rig = Rig()
    turn = rig.say("x")
    await rig.stream(turn, TextPiece("a"))
    rig.conversation.interrupt(turn, shown=None)
    for _ in range(3):
        rig.backend.feed("x", TextPiece("late"))
        await asyncio.sleep(0)
    deltas_after_end = rig.delivery.frames[rig.delivery.frames.index(rig.delivery.of(TurnEnd)[0]) :]
    assert not any(isinstance(f, Delta) for f in deltas_after_end)


async def test_actions_past_the_cut_are_retracted() -> None:
    """Actions beyond kept are retracted; those within it are done at the end."""
    rig = Rig()
    turn = rig.say("x")
    await rig.stream(
        turn, ActionPiece("wave"), TextPiece("Hello, "), ActionPiece("wave"), TextPiece("friend")
    )
    turn.note_written(7)
    rig.conversation.interrupt(turn, shown=None)
    await rig.finished(turn)
    actions = [f for f in rig.delivery.of(Action) if isinstance(f, Action)]
    assert [a.at for a in actions] == [0, 7]
    ends = {f.action: f.status for f in rig.delivery.of(ActionEnd) if isinstance(f, ActionEnd)}
    assert ends == {actions[0].action: "done", actions[1].action: "done"}
    rig2 = Rig()
    turn2 = rig2.say("y")
    await rig2.stream(turn2, TextPiece("Hello, "), ActionPiece("wave"), TextPiece("friend"))
    turn2.note_written(7)
    rig2.conversation.interrupt(turn2, shown=3)
    await rig2.finished(turn2)
    [end] = rig2.delivery.of(ActionEnd)
    assert isinstance(end, ActionEnd) and end.status == "retracted"


async def test_approval_actions_wait_for_act_or_expire() -> None:
    """An approval action stays open past the turn; act resolves it, else it expires."""
    rig = Rig()
    turn = rig.say("shop")
    await rig.stream(turn, TextPiece("Look! "), ActionPiece("open_shop"), ActionPiece("open_shop"))
    rig.backend.feed("shop", END)
    await rig.finished(turn)
    first, second = turn.actions
    assert rig.conversation.open_actions == 2
    rig.conversation.answer(turn, first, accept=True)
    rig.scheduler.fire_all()
    statuses = [
        (f.action, f.status) for f in rig.delivery.of(ActionEnd) if isinstance(f, ActionEnd)
    ]
    assert statuses == [(first.id, "accepted"), (second.id, "expired")]
    assert rig.conversation.open_actions == 0
    rig.conversation.answer(turn, first, accept=False)  # a late answer changes nothing
    assert len(rig.delivery.of(ActionEnd)) == 2


async def test_unknown_actions_from_the_backend_are_skipped() -> None:
    """A backend cannot make an NPC do what its config does not allow."""
    rig = Rig()
    turn = rig.say("x")
    rig.backend.feed("x", ActionPiece("burn_village"), TextPiece("ok"))
    await rig.delivery.wait_for(lambda: bool(rig.delivery.of(Delta)))
    assert rig.delivery.of(Action) == []
    assert turn.actions == []


async def test_supersede_policy_ends_the_active_turn() -> None:
    """busy=interrupt: a new say ends the active turn as superseded and starts at once."""
    rig = Rig(replace(NPC, busy=BusyPolicy.INTERRUPT))
    first = rig.say("one")
    await rig.stream(first, TextPiece("abc"))
    second = rig.say("two")
    end = await rig.finished(first)
    assert end.reason == "superseded"
    assert second.state is TurnState.ACTIVE and rig.limiter.active == 1
    await rig.stream(second, TextPiece("new"))
    rig.backend.feed("two", END)
    await rig.finished(second)
    assert rig.limiter.active == 0


async def test_in_a_room_only_who_may_interrupt_supersedes() -> None:
    """busy=interrupt in a room under room_interrupt="speaker": another member's say
    waits in line (a supersede would be the interrupt the rule refuses); the speaker's
    own say, the game's, and anyone's under "anyone" still supersede."""
    rig = Rig(replace(NPC, busy=BusyPolicy.INTERRUPT, max_queue=1), audience=Audience(room="hall"))
    first = rig.say("one")
    await rig.stream(first, TextPiece("abc"))
    bobs = rig.conversation.submit("bob", "me next", reply_to=7)
    assert bobs.queued == 1 and first.state is TurnState.ACTIVE
    with pytest.raises(Refused) as info:  # the line is full (max_queue)
        rig.conversation.submit("carol", "and me", reply_to=8)
    assert info.value.code is ErrorCode.BUSY
    again = rig.say("one more")  # the speaker changes their mind: supersedes
    assert (await rig.finished(first)).reason == "superseded"
    assert again.state is TurnState.ACTIVE and bobs.turn.state is TurnState.QUEUED
    game = rig.conversation.submit("", "the gate opens", reply_to=None, caused_by="game")
    assert (await rig.finished(again)).reason == "superseded"
    rig.backend.feed(game.turn.text_in, END)
    await rig.finished(game.turn)
    state: TurnState = bobs.turn.state  # mypy narrowed it to QUEUED above
    assert state is TurnState.ACTIVE  # its turn came

    anyone = Rig(
        replace(NPC, busy=BusyPolicy.INTERRUPT, room_interrupt=RoomInterrupt.ANYONE),
        audience=Audience(room="hall"),
    )
    first = anyone.say("one")
    cut = anyone.conversation.submit("bob", "hey", reply_to=7)
    assert cut.queued is None and (await anyone.finished(first)).reason == "superseded"


async def test_queue_policy_waits_its_turn() -> None:
    """busy=queue: says wait in line with their place, then run in order."""
    rig = Rig(replace(NPC, busy=BusyPolicy.QUEUE, max_queue=2))
    first = rig.say("one")
    queued = rig.conversation.submit("alice", "two", reply_to=2)
    third = rig.conversation.submit("alice", "three", reply_to=3)
    assert (queued.queued, third.queued) == (1, 2)
    with pytest.raises(Refused) as info:
        rig.say("four")
    assert info.value.code is ErrorCode.BUSY
    rig.backend.feed("one", TextPiece("1"), END)
    await rig.finished(first)
    assert queued.turn.state is TurnState.ACTIVE and rig.limiter.active == 1
    rig.conversation.interrupt(third.turn, shown=None)  # a queued turn just leaves the line
    cancelled = await rig.finished(third.turn)
    assert (cancelled.reason, cancelled.chars, cancelled.kept) == ("interrupted", 0, 0)
    assert not any(
        isinstance(f, TurnStart) and f.turn == third.turn.id for f in rig.delivery.frames
    )
    rig.backend.feed("two", END)
    await rig.finished(queued.turn)
    assert rig.conversation.idle and rig.limiter.active == 0


async def test_generation_cap_refuses_with_busy() -> None:
    """Past the server-wide cap a say is refused with busy and a retry_after."""
    rig = Rig(limit=1)
    rig.say("one")
    other = Conversation(
        NPC,
        Audience(player="bob"),
        backend=rig.backend,
        publisher=RecordingDelivery("player:bob"),
        limiter=rig.limiter,
        scheduler=rig.scheduler,
        make_request=lambda turn, history: GenerationRequest(NPC, turn.player, turn.text_in),
        new_id=lambda prefix: prefix + "b",
    )
    with pytest.raises(Refused) as info:
        other.submit("bob", "hi", reply_to=1)
    assert info.value.code is ErrorCode.BUSY and info.value.retry_after


async def test_backend_error_ends_turn_and_keeps_sent_text() -> None:
    """A GenerationError ends the turn with its reason and tells the speaker."""
    rig = Rig()
    turn = rig.say("x")
    await rig.stream(turn, TextPiece("partial"))
    rig.backend.feed("x", GenerationError("upstream said 503", reason="error"))
    end = await rig.finished(turn)
    assert (end.reason, end.chars, end.kept) == ("error", 7, 7)
    [(player, error)] = rig.delivery.to_player
    assert player == "alice" and isinstance(error, Error) and error.code == "backend_error"
    assert "503" in error.message
    assert rig.conversation.memory.lines()[-1].text == "partial"
    assert rig.limiter.active == 0


@pytest.mark.server_errors("the backend crashes on purpose; the server logs it")
async def test_unexpected_backend_crash_is_an_error_turn() -> None:
    """A bug in a backend ends only that turn, with a message that hides internals."""
    rig = Rig()
    turn = rig.say("x")
    rig.backend.feed("x", RuntimeError("secret internal detail"))
    end = await rig.finished(turn)
    assert end.reason == EndReason.ERROR
    [(_, error)] = rig.delivery.to_player
    assert isinstance(error, Error) and "secret" not in error.message


async def test_memory_is_bounded_oldest_first() -> None:
    """Conversation memory drops the oldest lines past memory_chars."""
    rig = Rig(replace(NPC, memory_chars=30))
    for i in range(5):
        turn = rig.say(f"question {i}")
        rig.backend.feed(f"question {i}", TextPiece(f"answer {i}"), END)
        await rig.finished(turn)
    lines = rig.conversation.memory.lines()
    assert rig.conversation.memory.chars <= 30
    assert lines[-1].text == "answer 4" and all("0" not in e.text for e in lines)


async def test_history_excludes_the_new_utterance() -> None:
    """The backend gets earlier lines as history and the new text separately."""
    rig = Rig()
    turn = rig.say("first")
    rig.backend.feed("first", TextPiece("one"), END)
    await rig.finished(turn)
    rig.say("second")
    await asyncio.sleep(0)
    request = rig.backend.requests[-1]
    assert request.text == "second"
    assert [e.text for e in request.history] == ["first", "one"]


@pytest.mark.parametrize(
    ("key", "audience"),
    [
        ("player:alice", Audience(player="alice")),
        ("room:hall", Audience(room="hall")),
        ("room:a:b", Audience(room="a:b")),
        ("player:", None),
        ("room", None),
        ("guild:x", None),
        ("", None),
    ],
)
def test_an_audience_is_read_back_from_its_key(key: str, audience: Audience | None) -> None:
    """`Audience.from_key` undoes `key` (what nodes send each other), and nothing else."""
    assert Audience.from_key(key) == audience
    if audience is not None:
        assert audience.key == key
