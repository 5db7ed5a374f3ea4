"""One timer per tick for every paced generation on a loop.

A scripted turn waits between its pieces. With `asyncio.sleep` each wait is a
coroutine, a timer handle and a callback of its own: at 500 players and 20
tokens/s, ten thousand timers a second, one per token. A `Pacer` groups the
waits by the tick they end in: each wait is one plain future, and one loop
timer per tick resolves every future due in it, in the order they were asked
for. A wait ends at the first tick boundary at or after its deadline (1 ms by
default, the resolution of uvloop's own timers), never before.

Cancelling the task that waits cancels its future only: the others of its
tick still fire on time.

`play()` goes further for a reply whose pieces are all known: the tick's
timer hands each piece to the turn itself (`take`), so no task wakes per
piece at all; the turn's task waits once per part of the reply. Its `then`
runs in the same callback as the last piece: a turn can end there, so its
`turn.end` is queued before the socket's write of that piece.

A play keeps to its own schedule, as a model server streams at its own
rate: piece k is due `sum(delays[:k + 1])` after the play started, not
`delays[k]` after the previous piece was handed over. A busy loop that
runs a tick late delays that tick's pieces only; the pieces behind them are
still due when they were (a piece already due is handed over in the next
loop iteration, with the others already due), so lateness does not add up
over a reply.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Callable, Sequence
from typing import Protocol

from npc_server.backends.base import Piece

TICK_S = 0.001
# Float noise (0.1 + 0.05 is 0.15000000000000002) must not push a wait a whole tick late.
_EPSILON_TICKS = 1e-6


class PacerLoop(Protocol):
    """What a pacer needs of its loop (an asyncio loop, or a fake clock in tests)."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> object: ...

    def create_future(self) -> asyncio.Future[None]: ...

    def call_soon(self, callback: Callable[[], object]) -> object: ...


class Part:
    """Pieces of a reply, each with the delay before it (seconds; 0: one loop iteration).

    `last`: nothing of the reply comes after this part (no tool call, no other part).
    """

    __slots__ = ("delays", "last", "pieces")

    def __init__(
        self, pieces: Sequence[Piece], delays: Sequence[float], last: bool = False
    ) -> None:
        self.pieces = pieces
        self.delays = delays
        self.last = last

    def __len__(self) -> int:
        return len(self.pieces)


class _Tick:
    """What is due at one tick (waits' futures, plays' next steps), run by its one timer."""

    __slots__ = ("due", "index", "pacer")

    def __init__(self, pacer: Pacer, index: int) -> None:
        self.pacer = pacer
        self.index = index
        self.due: list[asyncio.Future[None] | _Play] = []

    def fire(self) -> None:
        del self.pacer._ticks[self.index]
        for item in self.due:
            if isinstance(item, _Play):
                item.step()
            elif not item.done():  # cancelled with its task
                item.set_result(None)


class _Play:
    """Pieces handed to `take` one by one, each after its delay, from the pacer's timers."""

    __slots__ = ("due", "finished", "next", "pacer", "part", "take", "then")

    def __init__(
        self,
        pacer: Pacer,
        part: Part,
        take: Callable[[Piece], None],
        finished: asyncio.Future[None],
        then: Callable[[], None] | None,
    ) -> None:
        self.pacer = pacer
        self.part = part
        self.take = take
        self.finished = finished
        self.then = then
        self.next = 0
        self.due = pacer._loop.time()  # when the piece waited for is due (the schedule's clock)

    def step(self) -> None:
        """Hand over the piece waited for, then wait for the next (or end the play)."""
        done = self.finished
        if done.done():  # cancelled: the turn has stopped
            return
        at = self.next
        part = self.part
        pieces = part.pieces
        try:
            if at:
                self.take(pieces[at - 1])
            if at == len(pieces):
                if self.then is not None:
                    self.then()
                if not done.done():
                    done.set_result(None)
                return
        except Exception as exc:  # the awaiting task raises it, as from a generator
            if not done.done():
                done.set_exception(exc)
            return
        self.next = at + 1
        # As in `Pacer.wait_until`, inlined: this runs once per piece of every paced turn.
        delay = part.delays[at]
        pacer = self.pacer
        loop = pacer._loop
        if delay <= 0:
            loop.call_soon(self.step)
            return
        self.due = due = self.due + delay
        per_s = pacer._per_s
        index = math.ceil(due * per_s - _EPSILON_TICKS)
        passed = int(loop.time() * per_s)  # the tick just passed (its timer runs at once)
        if index < passed:  # already due (the loop ran late): with the others due, at once
            index = passed
        tick = pacer._ticks.get(index)
        if tick is None:
            tick = pacer._new_tick(index)
        tick.due.append(self)


class Pacer:
    """Waits of many generations, woken by one timer per tick."""

    def __init__(self, loop: PacerLoop, tick_s: float = TICK_S) -> None:
        self._loop = loop
        self._per_s = 1 / tick_s
        self._ticks: dict[int, _Tick] = {}

    def time(self) -> float:
        """The pacer's clock (its loop's)."""
        return self._loop.time()

    def wait(self, delay: float) -> asyncio.Future[None]:
        """A future resolved at the first tick at or after `delay` seconds from now."""
        return self.wait_until(self._loop.time() + delay)

    def wait_until(self, when: float) -> asyncio.Future[None]:
        """A future resolved at the first tick at or after `when` on the pacer's clock
        (in the next loop iteration if that has passed)."""
        future = self._loop.create_future()
        per_s = self._per_s
        index = math.ceil(when * per_s - _EPSILON_TICKS)
        passed = int(self._loop.time() * per_s)
        if index < passed:
            index = passed
        tick = self._ticks.get(index)
        if tick is None:
            tick = self._new_tick(index)
        tick.due.append(future)
        return future

    def play(
        self, part: Part, take: Callable[[Piece], None], then: Callable[[], None] | None = None
    ) -> asyncio.Future[None]:
        """Call `take(piece)` for each piece of `part` after its delay, from the tick timers.

        No task wakes per piece. `then()`, if given, runs right after the last
        piece is taken, in the same callback (for an empty part: at once).
        The future ends after that, or with the exception `take` or `then`
        raised; cancelling it stops the play (the pieces not yet taken are
        never taken, `then` never runs). A delay of 0 waits one loop
        iteration, as `asyncio.sleep(0)` would. Delays count from the play's
        start (see the module's docstring): a late tick does not push back
        the pieces after it.
        """
        play = _Play(self, part, take, self._loop.create_future(), then)
        play.step()
        return play.finished

    def _new_tick(self, index: int) -> _Tick:
        tick = self._ticks[index] = _Tick(self, index)
        self._loop.call_at(index / self._per_s, tick.fire)
        return tick

    @property
    def pending_ticks(self) -> int:
        """How many tick timers are scheduled (one per tick with a wait in it)."""
        return len(self._ticks)


_pacers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pacer] = weakref.WeakKeyDictionary()


def loop_pacer() -> Pacer:
    """The running loop's shared `Pacer`."""
    loop = asyncio.get_running_loop()
    found = _pacers.get(loop)
    if found is None:
        found = _pacers[loop] = Pacer(loop)
    return found
