"""Stopping tasks that may swallow a cancel.

redis-py 8 can lose a `cancel()` that arrives while a command awaits its reply:
the task goes on (seen with a loop of `SET`s, and inside a `SUBSCRIBE`). Code
that stops a task which talks to Redis cancels it again until it is done, and
never waits for it without a bound, so that closing never hangs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(
    tasks: list[asyncio.Task[Any]], tries: int = 5, wait_s: float = 0.5
) -> None:
    """Cancel `tasks` and wait for them; again if one swallowed its cancel (redis-py can,
    inside a SUBSCRIBE), so that closing never hangs."""
    pending = {t for t in tasks if not t.done()}
    for _ in range(tries):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=wait_s)
    if pending:
        log.warning(
            "%d tasks did not stop: %s", len(pending), sorted(t.get_name() for t in pending)
        )
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: an error here was reported where it happened
