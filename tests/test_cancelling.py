"""Stopping tasks that swallow a cancel (as redis-py 8 can): never a hang."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from npc_server.cancelling import cancel_and_wait


async def test_a_task_that_swallows_its_first_cancel_is_cancelled_again() -> None:
    """A task that goes on after one cancel is cancelled again until it stops."""
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 2:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task], wait_s=0.01), 5)
    assert task.cancelled() and swallowed == 3


async def test_a_task_that_never_stops_is_given_up_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After its tries, a task that ignores every cancel is left, named in a warning, and
    the caller goes on instead of hanging."""
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    task = asyncio.create_task(deaf(), name="deaf-task")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="npc_server.cancelling"):
        await asyncio.wait_for(cancel_and_wait([task], tries=3, wait_s=0.01), 5)
    assert not task.done() and "deaf-task" in caplog.text
    release.set()
    await asyncio.wait_for(task, 5)
