"""Tests of the shared pacer: one timer per tick wakes every wait due in it."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from npc_server.backends.base import GenerationRequest, Piece, TextPiece
from npc_server.backends.pacer import Pacer, Part, loop_pacer
from npc_server.backends.scripted import ScriptedBackend
from npc_server.npcs import NpcConfig
from npc_server.protocol.frames import Delta, ServerFrame, TurnEnd
from npc_server.turns import Audience, Conversation, GenerationLimiter

FIRST_S = 0.1
INTERVAL_S = 0.05


class FakeLoop:
    """A clock moved by the test; timers fire in time order, futures are the real loop's."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, int, Callable[[], object]]] = []
        self.scheduled = 0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> object:
        self.scheduled += 1
        heapq.heappush(self.timers, (when, self.scheduled, callback))
        return None

    def create_future(self) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    def call_soon(self, callback: Callable[[], object]) -> object:
        return asyncio.get_running_loop().call_soon(callback)

    def advance(self, seconds: float) -> None:
        self.advance_to(self.now + seconds)

    def advance_to(self, end: float) -> None:
        while self.timers and self.timers[0][0] <= end:
            when, _, callback = heapq.heappop(self.timers)
            self.now = max(self.now, when)
            callback()
        self.now = end

    def fire_late(self, late: float) -> None:
        """Run the next timer `late` seconds after it was due, as a busy loop would."""
        when, _, callback = heapq.heappop(self.timers)
        self.now = max(self.now, when + late)
        callback()


async def settle() -> None:
    """Let every task woken so far run up to its next wait (yields, no time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_wait_ends_at_the_first_tick_at_or_after_its_deadline() -> None:
    """A wait of 2.5 ms from 0.2 ms is resolved at 3 ms, not a tick before."""

    async def main() -> None:
        clock = FakeLoop()
        clock.now = 0.0002
        future = Pacer(clock).wait(0.0025)
        clock.advance(0.0027)  # now 2.9 ms
        assert not future.done()
        clock.advance(0.0001)
        assert future.done()
        assert clock.now == pytest.approx(0.003)

    asyncio.run(main())


def test_waits_due_in_one_tick_share_one_timer_and_keep_their_order() -> None:
    """Waits ending in the same tick are resolved by one timer, in the order asked for."""

    async def main() -> None:
        clock = FakeLoop()
        pacer = Pacer(clock)
        woken: list[str] = []

        def wake(name: str) -> Callable[[asyncio.Future[None]], None]:
            return lambda _: woken.append(name)

        for name, delay in [("a", 0.0101), ("b", 0.0104), ("c", 0.005), ("d", 0.0109)]:
            pacer.wait(delay).add_done_callback(wake(name))
        assert clock.scheduled == 2  # the 5 ms tick and the 11 ms tick
        assert pacer.pending_ticks == 2
        clock.advance(0.011)
        await settle()
        assert woken == ["c", "a", "b", "d"]
        assert pacer.pending_ticks == 0

    asyncio.run(main())


def test_cancelling_one_wait_leaves_the_others_of_its_tick() -> None:
    """A task cancelled while it waits ends at once; the others of its tick wake on time."""

    async def main() -> None:
        clock = FakeLoop()
        pacer = Pacer(clock)
        woke: list[int] = []

        async def sleeper(n: int) -> None:
            await pacer.wait(0.05)
            woke.append(n)

        tasks = [asyncio.create_task(sleeper(n)) for n in range(3)]
        await settle()
        tasks[1].cancel()
        await settle()
        assert tasks[1].cancelled()  # without the clock moving
        assert woke == []
        clock.advance(0.05)
        await settle()
        assert woke == [0, 2]
        assert all(t.done() for t in tasks)

    asyncio.run(main())


def test_the_running_loop_has_one_pacer() -> None:
    """Every turn on a loop shares its pacer; another loop gets its own."""

    async def twice() -> tuple[Pacer, Pacer]:
        return loop_pacer(), loop_pacer()

    first, again = asyncio.run(twice())
    assert first is again
    other, _ = asyncio.run(twice())
    assert other is not first


# The scripted backend paced by one pacer.


def _npc() -> NpcConfig:
    settings: dict[str, Any] = {
        "first_token_ms": FIRST_S * 1000,
        "tokens_per_second": 1 / INTERVAL_S,
        "long_reply_chars": 300,
        "topics": [{"name": "t", "keywords": ["rope"], "replies": ["Rope is cheap today."]}],
        "fallback": ["Eh?"],
    }
    return NpcConfig(id="mira", name="Mira", backend_settings=settings)


def test_many_turns_on_one_pacer_keep_their_timing_and_order() -> None:
    """Turns started at different times each get first token, then one piece per interval."""

    async def main() -> None:
        clock = FakeLoop()
        pacer = Pacer(clock)
        npc = _npc()
        backend = ScriptedBackend(npc, npc.backend_settings, sleep=pacer.wait)
        arrivals: dict[int, list[float]] = {}
        order: list[int] = []

        async def turn(n: int) -> None:
            request = GenerationRequest(npc=npc, player=f"p{n}", text="rope?", seed=n)
            async for piece in backend.generate(request):
                if isinstance(piece, TextPiece):
                    arrivals.setdefault(n, []).append(clock.now)
                    order.append(n)

        starts = {0: 0.0, 1: 0.0, 2: 0.0203, 3: 0.0417}
        tasks: list[asyncio.Task[None]] = []
        for n, start in starts.items():
            clock.advance_to(start)
            tasks.append(asyncio.create_task(turn(n)))
            await settle()
        for ms in range(42, 700):  # to 0.7 s, on the 1 ms ticks
            clock.advance_to(ms / 1000)
            await settle()
        for n, start in starts.items():
            times = arrivals[n][:10]
            assert times[0] == pytest.approx(_tick(start + FIRST_S))
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert gaps == [pytest.approx(INTERVAL_S)] * len(gaps)
        # Turns 0 and 1 started together: they take turns, 0 first, piece by piece.
        both = [n for n in order if n in (0, 1)][:8]
        assert both == [0, 1] * 4
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def test_generate_keeps_to_the_replys_schedule_as_play_does() -> None:
    """On the pacer (no injected sleep), a generated reply's pieces are due from its
    start too: a tick run late delays its own piece, not the ones after it."""

    async def main() -> None:
        clock = FakeLoop()
        npc = _npc()
        backend = ScriptedBackend(npc, npc.backend_settings, pacer=Pacer(clock))
        times: list[float] = []

        async def turn() -> None:
            request = GenerationRequest(npc=npc, player="p", text="rope?", seed=0)
            async for piece in backend.generate(request):
                if isinstance(piece, TextPiece):
                    times.append(round(clock.now, 6))

        task = asyncio.create_task(turn())
        await settle()
        clock.fire_late(0.007)  # the first piece's tick runs 7 ms late
        await settle()
        for ms in range(108, 400):
            clock.advance_to(ms / 1000)
            await settle()
        assert times[:5] == [0.107, 0.15, 0.2, 0.25, 0.3]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_an_interrupted_turn_stops_and_the_others_go_on() -> None:
    """Cancelling one paced turn stops its pieces; the turns sharing its ticks keep theirs."""

    async def main() -> None:
        clock = FakeLoop()
        pacer = Pacer(clock)
        npc = _npc()
        backend = ScriptedBackend(npc, npc.backend_settings, sleep=pacer.wait)
        counts = [0, 0, 0]

        async def turn(n: int) -> None:
            request = GenerationRequest(npc=npc, player=f"p{n}", text="rope?", seed=0)
            async for _ in backend.generate(request):
                counts[n] += 1

        tasks = [asyncio.create_task(turn(n)) for n in range(3)]
        await settle()  # all three start at 0
        for ms in range(1, 201):
            clock.advance_to(ms / 1000)
            await settle()
        assert counts == [3, 3, 3]  # at 100, 150 and 200 ms
        tasks[1].cancel()
        await settle()
        assert tasks[1].cancelled()
        for ms in range(201, 301):
            clock.advance_to(ms / 1000)
            await settle()
        assert counts == [5, 3, 5]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def _tick(seconds: float) -> float:
    """`seconds` rounded up to the pacer's 1 ms tick."""
    return -(-round(seconds * 1e6) // 1000) / 1000


# Plays: pieces handed over from the tick timers, no task step per piece.


def test_a_play_hands_each_piece_over_after_its_delay() -> None:
    """`take` gets each piece at its tick, in order; the future ends after the last."""

    async def main() -> None:
        clock = FakeLoop()
        taken: list[tuple[float, str]] = []
        pieces = [TextPiece(t) for t in ("One ", "two ", "three.")]
        done = Pacer(clock).play(
            Part(pieces, [0.1, 0.05, 0.05]), lambda p: taken.append((clock.now, _text(p)))
        )
        for ms in range(1, 200):
            clock.advance_to(ms / 1000)
        assert [text for _, text in taken] == ["One ", "two "]
        assert [t for t, _ in taken] == [pytest.approx(0.1), pytest.approx(0.15)]
        assert len(taken) == 2 and not done.done()
        clock.advance_to(0.2)
        assert len(taken) == 3 and taken[2][1] == "three."
        assert taken[2][0] == pytest.approx(0.2)
        assert done.done() and done.result() is None

    asyncio.run(main())


def _late_play(late: float) -> list[tuple[float, str]]:
    """A five-piece play (0.1 s, then 0.05 s each) whose first tick runs `late` s late."""

    async def main() -> list[tuple[float, str]]:
        clock = FakeLoop()
        taken: list[tuple[float, str]] = []
        pieces = [TextPiece(t) for t in "abcde"]
        done = Pacer(clock).play(
            Part(pieces, [0.1, 0.05, 0.05, 0.05, 0.05]),
            lambda p: taken.append((round(clock.now, 6), _text(p))),
        )
        clock.fire_late(late)
        clock.advance_to(1.0)
        assert done.done() and done.result() is None
        return taken

    return asyncio.run(main())


def test_a_tick_run_late_delays_its_own_piece_only() -> None:
    """The schedule counts from the play's start: after a late tick the rest stay on time."""
    assert _late_play(0.007) == [(0.107, "a"), (0.15, "b"), (0.2, "c"), (0.25, "d"), (0.3, "e")]


def test_pieces_that_fell_due_while_the_loop_was_busy_come_at_once_and_in_order() -> None:
    """Pieces due during a stall are handed over as soon as it ends; the next keeps its time."""
    assert _late_play(0.13) == [(0.23, "a"), (0.23, "b"), (0.23, "c"), (0.25, "d"), (0.3, "e")]


def test_pieces_that_fell_due_in_a_stall_share_one_timer() -> None:
    """After a stall the pieces already due of every play go in one tick, not in a
    timer each for the ticks they missed."""

    async def main() -> None:
        clock = FakeLoop()
        pacer = Pacer(clock)
        taken: list[str] = []
        for name, second in (("a", 0.05), ("b", 0.07)):
            pieces = [TextPiece(name + "1"), TextPiece(name + "2")]
            pacer.play(Part(pieces, [0.1, second]), lambda p: taken.append(_text(p)))
        assert clock.scheduled == 1  # both first pieces are due at 0.1
        clock.fire_late(0.13)  # the loop was busy until 0.23: a2 and b2 are due already
        assert taken == ["a1", "b1"] and clock.scheduled == 2
        clock.advance_to(0.23)
        assert taken == ["a1", "b1", "a2", "b2"]

    asyncio.run(main())


def test_cancelling_a_play_stops_its_pieces_and_not_the_others() -> None:
    """Two plays on the same ticks: the cancelled one takes nothing more, the other goes on."""

    async def main() -> None:
        clock = FakeLoop()
        pacer = Pacer(clock)
        taken: dict[str, list[str]] = {"a": [], "b": []}
        part = Part([TextPiece(str(i)) for i in range(5)], [0.01] * 5)

        def taker(name: str) -> Callable[[Piece], None]:
            return lambda piece: taken[name].append(_text(piece))

        plays = {name: pacer.play(part, taker(name)) for name in taken}
        clock.advance_to(0.02)
        plays["a"].cancel()
        clock.advance_to(0.1)
        assert taken == {"a": ["0", "1"], "b": ["0", "1", "2", "3", "4"]}
        assert plays["b"].done() and plays["a"].cancelled()

    asyncio.run(main())


def test_an_error_in_take_ends_the_play_with_it() -> None:
    """The exception `take` raises is the future's; no piece is taken after it."""

    async def main() -> None:
        clock = FakeLoop()
        taken: list[str] = []

        def take(piece: Piece) -> None:
            if len(taken) == 1:
                raise ValueError("broken")
            taken.append(_text(piece))

        part = Part([TextPiece(str(i)) for i in range(4)], [0.01] * 4)
        done = Pacer(clock).play(part, take)
        clock.advance_to(0.1)
        assert taken == ["0"]
        with pytest.raises(ValueError, match="broken"):
            done.result()

    asyncio.run(main())


def test_then_runs_in_the_callback_of_the_last_piece() -> None:
    """`then` runs right after the last `take`, before the future ends; a cancelled play skips it."""

    async def main() -> None:
        clock = FakeLoop()
        pacer = Pacer(clock)
        events: list[str] = []
        part = Part([TextPiece(str(i)) for i in range(3)], [0.01] * 3)
        done = pacer.play(part, lambda p: events.append(_text(p)), lambda: events.append("then"))
        cut = pacer.play(part, lambda p: None, lambda: events.append("cut"))
        clock.advance_to(0.02)
        cut.cancel()
        assert events == ["0", "1"]
        clock.advance_to(0.03)  # the tick of the last piece: no loop iteration in between
        assert events == ["0", "1", "2", "then"] and done.done()
        empty = pacer.play(Part([], []), lambda p: None, lambda: events.append("empty"))
        assert events[-1] == "empty" and empty.done()
        clock.advance_to(0.1)
        assert "cut" not in events

    asyncio.run(main())


def test_an_error_in_then_ends_the_play_with_it() -> None:
    """The exception `then` raises is the future's, as one from `take` would be."""

    async def main() -> None:
        clock = FakeLoop()

        def then() -> None:
            raise ValueError("broken")

        done = Pacer(clock).play(Part([TextPiece("a")], [0.01]), lambda p: None, then)
        clock.advance_to(0.1)
        with pytest.raises(ValueError, match="broken"):
            done.result()

    asyncio.run(main())


def test_unpaced_plays_give_the_loop_a_turn_per_piece() -> None:
    """With delay 0 each piece waits one loop iteration: another task runs in between."""

    async def main() -> None:
        events: list[str] = []
        part = Part([TextPiece(str(i)) for i in range(3)], [0.0] * 3)
        done = Pacer(asyncio.get_running_loop()).play(part, lambda p: events.append(_text(p)))

        async def other() -> None:
            for _ in range(3):
                events.append("other")
                await asyncio.sleep(0)

        await asyncio.gather(done, other())
        assert events.index("0") < events.index("other", 1) < events.index("2")

    asyncio.run(main())


# A conversation of the scripted backend on one pacer.


class Frames:
    """A `Publisher` recording (fake time, channel, frame)."""

    def __init__(self, clock: FakeLoop) -> None:
        self.clock = clock
        self.sent: list[tuple[float, str, ServerFrame]] = []

    def publish_nowait(self, channel: str, frame: ServerFrame, exclude: str | None = None) -> None:
        self.sent.append((self.clock.now, channel, frame))

    def drop_turn_nowait(self, channel: str, turn: str) -> None:
        return None

    def of(self, player: str) -> list[tuple[float, ServerFrame]]:
        return [(t, f) for t, c, f in self.sent if c == f"player:{player}"]


def paced_conversation(
    npc: NpcConfig,
    player: str,
    backend: ScriptedBackend,
    frames: Frames,
    clock: FakeLoop,
    ids: Iterator[int],
    limit: int,
) -> Conversation:
    """A player's conversation with `npc` whose turns the fake loop's pacer plays."""
    return Conversation(
        npc,
        Audience(player=player),
        backend=backend,
        publisher=frames,
        limiter=GenerationLimiter(limit),
        scheduler=_Scheduler(),
        make_request=lambda turn, history: GenerationRequest(
            npc, turn.player, turn.text_in, history
        ),
        new_id=lambda prefix: f"{prefix}{next(ids)}",
        clock=clock.time,
    )


def test_conversations_paced_by_one_pacer_interrupt_one_and_the_others_go_on() -> None:
    """Deltas come at first-token then interval; an interrupted turn ends with nothing after."""

    async def main() -> None:
        clock = FakeLoop()
        npc = _npc()
        backend = ScriptedBackend(npc, npc.backend_settings, pacer=Pacer(clock))
        frames = Frames(clock)
        ids = itertools.count()
        conversations = [
            paced_conversation(npc, f"p{n}", backend, frames, clock, ids, limit=10)
            for n in range(3)
        ]
        turns = [c.submit(f"p{n}", "rope?", reply_to=1).turn for n, c in enumerate(conversations)]
        await settle()
        for ms in range(1, 201):
            clock.advance_to(ms / 1000)
            await settle()
        conversations[1].interrupt(turns[1], None)
        for ms in range(201, 400):
            clock.advance_to(ms / 1000)
            await settle()
        for n in (0, 2):
            deltas = [(t, f) for t, f in frames.of(f"p{n}") if isinstance(f, Delta)]
            times = [t for t, _ in deltas]
            assert times[0] == pytest.approx(FIRST_S)
            assert [b - a for a, b in itertools.pairwise(times)] == [pytest.approx(INTERVAL_S)] * (
                len(times) - 1
            )
            assert len(deltas) == 6  # at 100, 150, ..., 350 ms (the clock stops at 399)
        cut = frames.of("p1")
        end = next(i for i, (_, f) in enumerate(cut) if isinstance(f, TurnEnd))
        last = cut[end][1]
        assert isinstance(last, TurnEnd) and last.reason == "interrupted"
        assert [f for _, f in cut[end + 1 :] if isinstance(f, Delta)] == []
        assert sum(isinstance(f, Delta) for _, f in cut) == 3
        await settle()
        assert turns[1].task is not None and turns[1].task.done()
        for c in conversations:
            await c.aclose()

    asyncio.run(main())


def test_a_turn_ends_in_the_timer_callback_of_its_last_piece() -> None:
    """`turn.end` is published with the last delta, before any task runs again."""

    async def main() -> None:
        clock = FakeLoop()
        npc = _npc()
        backend = ScriptedBackend(npc, npc.backend_settings, pacer=Pacer(clock))
        frames = Frames(clock)
        conversation = paced_conversation(
            npc, "p0", backend, frames, clock, itertools.repeat(1), limit=1
        )
        turn = conversation.submit("p0", "rope?", reply_to=1).turn
        await settle()
        ms = 0
        while not any(isinstance(f, TurnEnd) for _, _, f in frames.sent):
            await settle()  # the turn's task may run only before the timers fire
            ms += 1
            assert ms < 10_000, "the turn never ended"
            clock.advance_to(ms / 1000)
        (delta_at, _, last), (end_at, _, end) = frames.sent[-2:]
        assert isinstance(last, Delta) and isinstance(end, TurnEnd) and end.reason == "done"
        assert delta_at == end_at == ms / 1000
        assert conversation.active is None and turn.task is not None
        sent = len(frames.sent)
        await settle()
        assert turn.task.done() and not turn.task.cancelled()
        assert len(frames.sent) == sent, "the task publishes nothing more as it returns"
        await conversation.aclose()

    asyncio.run(main())


class _Scheduler:
    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback)


def _text(piece: Piece) -> str:
    assert isinstance(piece, TextPiece)
    return piece.text
