"""The direct writer's scheduling: one flush per socket per loop iteration, whatever was pushed."""

from __future__ import annotations

import asyncio
from typing import cast

from npc_server.transports.direct import DirectFlush, ReadySignal


class CountingFlush:
    """Stands in for a DirectFlush: counts the flushes it is asked for."""

    def __init__(self) -> None:
        self.flushes = 0

    def flush_nowait(self) -> None:
        self.flushes += 1


async def next_iteration() -> None:
    """Return once the callbacks scheduled so far have run (FIFO)."""
    done = asyncio.Event()
    asyncio.get_running_loop().call_soon(done.set)
    await done.wait()


async def test_pushes_in_one_iteration_make_one_flush_per_socket() -> None:
    """Three pushes to one socket and one to another: one write each, after the pushes."""
    first, second = ReadySignal(), ReadySignal()
    a, b = CountingFlush(), CountingFlush()
    first.direct, second.direct = cast(DirectFlush, a), cast(DirectFlush, b)
    for _ in range(3):
        first.set()
    second.set()
    assert (a.flushes, b.flushes) == (0, 0), "nothing is written inside the pushing step"
    await next_iteration()
    assert (a.flushes, b.flushes) == (1, 1)
    first.set()
    await next_iteration()
    assert (a.flushes, b.flushes) == (2, 1)


async def test_without_direct_writes_the_signal_is_the_writer_tasks_event() -> None:
    """On Hypercorn's send path `set()` wakes the writer task as an asyncio.Event does."""
    ready = ReadySignal()
    ready.set()
    assert ready.is_set()


async def test_a_writer_that_ended_gets_no_flush() -> None:
    """A flush already scheduled when the writer stops does nothing."""
    ready = ReadySignal()
    flush = CountingFlush()
    ready.direct = cast(DirectFlush, flush)
    ready.set()
    ready.direct = None
    await next_iteration()
    assert flush.flushes == 0 and not ready.is_set()
