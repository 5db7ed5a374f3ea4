"""The lazily re-armed deadline: expiry, moving deadlines, and cancels that are not its own."""

from __future__ import annotations

import asyncio

import pytest

from npc_server.backends.deadline import Deadline, Expired

from .openai_support import MS


def later(delay: float) -> asyncio.Event:
    """An event set `delay` seconds from now by the loop's own timer."""
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(delay, event.set)
    return event


async def test_a_wait_that_finishes_in_time_returns_its_value() -> None:
    """The awaited step's result comes back when it beats the deadline."""
    deadline = Deadline()
    loop = asyncio.get_running_loop()
    assert await deadline.wait(asyncio.sleep(0, "value"), loop.time() + 1.0) == "value"
    deadline.close()


async def test_a_wait_past_its_deadline_raises_expired() -> None:
    """A step still pending at the deadline is cancelled and Expired is raised."""
    deadline = Deadline()
    loop = asyncio.get_running_loop()
    with pytest.raises(Expired):
        await deadline.wait(asyncio.Event().wait(), loop.time() + 20 * MS)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # the cancel it used is taken back
    deadline.close()


async def test_a_deadline_moved_later_does_not_fire_early() -> None:
    """After a wait with an early deadline, a later wait lasts until its own deadline."""
    deadline = Deadline()
    loop = asyncio.get_running_loop()
    await deadline.wait(asyncio.sleep(0), loop.time() + 20 * MS)  # timer set for +20 ms
    # The timer fires at +20 ms, sees the deadline moved and re-arms for +500 ms.
    assert await deadline.wait(later(80 * MS).wait(), loop.time() + 500 * MS) is True
    deadline.close()


async def test_a_deadline_moved_earlier_fires_at_the_new_time() -> None:
    """A wait with an earlier deadline than the scheduled timer expires at its own deadline."""
    deadline = Deadline()
    loop = asyncio.get_running_loop()
    await deadline.wait(asyncio.sleep(0), loop.time() + 60.0)
    with pytest.raises(Expired):
        await asyncio.wait_for(deadline.wait(asyncio.Event().wait(), loop.time() + 20 * MS), 5.0)
    deadline.close()


async def test_the_timer_never_cancels_outside_a_wait() -> None:
    """A deadline that passes while no wait is armed leaves the task's own awaits alone."""
    deadline = Deadline()
    loop = asyncio.get_running_loop()
    await deadline.wait(asyncio.sleep(0), loop.time() + 20 * MS)
    await later(80 * MS).wait()  # the timer fires in here and must not cancel it
    assert await deadline.wait(asyncio.sleep(0, "next"), loop.time() + 1.0) == "next"
    deadline.close()


async def test_an_outside_cancel_passes_through() -> None:
    """Cancelling the waiting task raises CancelledError, not Expired."""
    deadline = Deadline()
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(deadline.wait(asyncio.Event().wait(), loop.time() + 60.0))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline.close()


async def test_an_outside_cancel_at_expiry_still_cancels() -> None:
    """If the task is cancelled from outside as the deadline expires, the cancel wins."""
    deadline = Deadline()
    loop = asyncio.get_running_loop()
    when = loop.time() + 20 * MS
    task = asyncio.create_task(deadline.wait(asyncio.Event().wait(), when))
    loop.call_at(when, task.cancel)  # the same moment as the deadline's own cancel
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline.close()
