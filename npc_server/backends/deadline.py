"""One lazily re-armed timer that bounds the waits of a stream reader.

`asyncio.timeout_at` around every awaited chunk costs a context manager, a
timer-heap push and a cancelled handle per chunk. A stream's deadline mostly
moves forward (each chunk pushes the idle limit out), so this keeps a single
`loop.call_at` handle per stream and only stores the new deadline per chunk:
when the timer fires early it re-schedules itself at the current deadline;
when the deadline has passed and a wait is armed, it cancels the waiting task,
and `wait()` turns that cancel into `Expired` (other cancels pass through).

The timer cancels only while armed, so a reader that yields between waits is
never cancelled in its consumer's code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Expired(Exception):
    """The armed wait ran past its deadline."""


class Deadline:
    """A deadline for the awaits of one task, re-armed per wait without a new timer."""

    __slots__ = ("_armed", "_expired", "_handle", "_loop", "_task", "_when")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._when = 0.0
        self._armed = False
        self._expired = False
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None

    async def wait(self, step: Awaitable[T], when: float) -> T:
        """Await `step` until loop time `when`; raise `Expired` if it is not done by then."""
        self._arm(when)
        try:
            return await step
        except asyncio.CancelledError:
            if self._take_back_cancel():
                raise Expired from None
            raise
        finally:
            self._armed = False
            self._take_back_cancel()  # in case the step swallowed the cancel

    def _take_back_cancel(self) -> bool:
        """Undo this deadline's cancel, if it sent one; True when no other cancel is pending."""
        if not self._expired or self._task is None:
            return False
        self._expired = False
        return self._task.uncancel() == 0

    def close(self) -> None:
        """Drop the timer (the stream is done)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, when: float) -> None:
        self._when = when
        self._armed = True
        self._task = asyncio.current_task()
        handle = self._handle
        if handle is None:
            self._handle = self._loop.call_at(when, self._fire)
        elif handle.when() > when:  # the deadline moved closer: the timer must too
            handle.cancel()
            self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        if not self._armed:
            return  # no wait in progress; the next wait schedules again
        if self._loop.time() < self._when:
            self._handle = self._loop.call_at(self._when, self._fire)
            return
        if self._task is not None and not self._expired:
            self._expired = True
            self._task.cancel()
