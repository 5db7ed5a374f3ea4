"""A watcher for tests: follows `/watch` (or `/ops/events`) with httpx-sse, event by event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent, aconnect_sse

TIMEOUT = 10.0


@dataclass
class Watch:
    """An open event stream; `events` holds every event read so far."""

    source: EventSource
    events: list[ServerSentEvent] = field(default_factory=list)
    _iterator: AsyncIterator[ServerSentEvent] | None = None

    @property
    def status(self) -> int:
        return self.source.response.status_code

    async def next(self, timeout: float = TIMEOUT) -> ServerSentEvent:
        if self._iterator is None:
            self._iterator = self.source.aiter_sse()
        event = await asyncio.wait_for(anext(self._iterator), timeout)
        self.events.append(event)
        return event

    async def until(
        self, done: Callable[[ServerSentEvent], bool], timeout: float = TIMEOUT
    ) -> list[ServerSentEvent]:
        """Events up to and including the first for which `done` holds."""
        got: list[ServerSentEvent] = []
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next(timeout)
                got.append(event)
                if done(event):
                    return got

    @property
    def last_id(self) -> str | None:
        ids = [e.id for e in self.events if e.id]
        return ids[-1] if ids else None


def data(event: ServerSentEvent) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(event.data)
    return value


@asynccontextmanager
async def watch(
    base: str,
    path: str = "/watch",
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[Watch]:
    """Open an event stream (any status: check `status` before reading)."""
    timeout = httpx.Timeout(TIMEOUT, read=None)
    async with httpx.AsyncClient(base_url=base, timeout=timeout) as http:
        async with aconnect_sse(
            http, "GET", path, params=params, headers=dict(headers or {})
        ) as source:
            yield Watch(source)
