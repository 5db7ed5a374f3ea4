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
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Callable
from typing import Protocol

TICK_S = 0.001
# Float noise (0.1 + 0.05 is 0.15000000000000002) must not push a wait a whole tick late.
_EPSILON_TICKS = 1e-6


class PacerLoop(Protocol):
    """What a pacer needs of its loop (an asyncio loop, or a fake clock in tests)."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> object: ...

    def create_future(self) -> asyncio.Future[None]: ...


class _Tick:
    """The futures due at one tick, resolved by its one timer."""

    __slots__ = ("futures", "index", "pacer")

    def __init__(self, pacer: Pacer, index: int) -> None:
        self.pacer = pacer
        self.index = index
        self.futures: list[asyncio.Future[None]] = []

    def fire(self) -> None:
        del self.pacer._ticks[self.index]
        for future in self.futures:
            if not future.done():  # cancelled with its task
                future.set_result(None)


class Pacer:
    """Waits of many generations, woken by one timer per tick."""

    def __init__(self, loop: PacerLoop, tick_s: float = TICK_S) -> None:
        self._loop = loop
        self._per_s = 1 / tick_s
        self._ticks: dict[int, _Tick] = {}

    def wait(self, delay: float) -> asyncio.Future[None]:
        """A future resolved at the first tick at or after `delay` seconds from now."""
        loop = self._loop
        index = math.ceil((loop.time() + delay) * self._per_s - _EPSILON_TICKS)
        tick = self._ticks.get(index)
        if tick is None:
            tick = self._ticks[index] = _Tick(self, index)
            loop.call_at(index / self._per_s, tick.fire)
        future = loop.create_future()
        tick.futures.append(future)
        return future

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
