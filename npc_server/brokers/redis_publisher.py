"""The Redis broker's publisher: publications written in batches, answers counted as they come.

What is queued goes out in one write of `PUBLISH` commands, at most one every
`window` (5 ms; at once after a quiet spell): a write to Redis and the read of
its answers cost system calls, and the receiving nodes' reads follow the
batches; a turn's tokens rarely share a loop iteration, so without the window
a busy node's batch was one publication. Writing does not wait for the
answers: batches follow each other on one `RedisLink`, and each answer (the
number of connections that received the publication) is matched to its
publication in order, as it arrives.

A batch whose link was lost before all its answers came is reported lost:
whether Redis delivered it is unknown, and the broker's receivers ignore a
publication they have seen (numbers only grow), so nothing is written twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from npc_server.brokers.redis_link import RedisLink, command, open_link, publish_commands
from npc_server.cancelling import cancel_and_wait

log = logging.getLogger(__name__)

# channels of a batch, their receivers, and what the broker had heard when it was written
Answered = Callable[[list[str], list[Any], int], None]
# channels of the batches lost, the last publication number each could hold, the reason
Lost = Callable[[list[tuple[str, int]], BaseException], None]


class PublishRefused(Exception):
    """Redis answered a `PUBLISH` with an error (an ACL, a busy script): the link is fine."""


@dataclass(slots=True)
class _Batch:
    channels: list[str]
    upto: int  # the broker's publication number when the batch was written
    heard: int
    at: float  # loop time it was written
    receivers: list[Any] = field(default_factory=list)
    probe: bool = False  # a PING of an idle link, not publications


class Publisher:
    """Publications for Redis, on one link the publisher opens when it has something to send."""

    def __init__(
        self,
        pool: Any,
        *,
        window: float,
        answered: Answered,
        lost: Lost,
        heard: Callable[[], int],
        number: Callable[[], int],
    ) -> None:
        self._pool = pool
        self.window = window
        self._answered = answered
        self._lost = lost
        self._heard = heard
        self._number = number
        self.pending: list[tuple[str, bytes]] = []  # (Redis channel, data)
        self._in_flight: collections.deque[_Batch] = collections.deque()
        self._link: RedisLink | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._timer: asyncio.Handle | None = None
        self._answers_in = asyncio.Event()  # set whenever nothing waits for an answer
        self._answers_in.set()
        self._batch_at = -math.inf  # when the last batch went (loop time)
        self._closed = False
        self.sent = 0
        self.batches = 0

    def add_nowait(self, channel: str, data: bytes) -> None:
        """Queue one publication; it goes with the next batch."""
        self.pending.append((channel, data))
        if self._timer is None and self._connecting is None and not self._closed:
            self._schedule()

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        at = self._batch_at + self.window
        if at <= loop.time():
            self._timer = loop.call_soon(self._write)
        else:
            self._timer = loop.call_at(at, self._write)

    def _write(self) -> None:
        self._timer = None
        if not self.pending:
            return
        link = self._link
        if link is None or not link.is_open:
            if link is not None:
                self._link_lost(link)  # before its callback: its batches are lost first
            self._connect()
            return
        if link.paused:  # Redis reads slower than this node writes: resumed by the link
            return
        batch, self.pending = self.pending, []
        self._batch_at = now = asyncio.get_running_loop().time()
        record = _Batch([c for c, _ in batch], self._number(), self._heard(), now)
        try:
            link.write(publish_commands(batch))
        except ConnectionError as exc:
            self._lost([(c, record.upto) for c in record.channels], exc)
            return
        self._in_flight.append(record)
        self._answers_in.clear()
        self.sent += len(batch)
        self.batches += 1

    def check_nowait(self, idle_after: float, answer_within: float) -> None:
        """Called every second or so: a link whose oldest batch waits for its answers longer
        than `answer_within` is given up (its batches reported lost, the next write opens
        another); a link idle for `idle_after` is pinged, so that a dead one is found
        before the next publication is written into it."""
        link = self._link
        if link is None or not link.is_open:
            return
        now = asyncio.get_running_loop().time()
        if self._in_flight and now - self._in_flight[0].at > answer_within:
            log.warning("no answer from Redis to the publisher for %.0f s", answer_within)
            link.abort("no answer from Redis to the publisher")
        elif not self._in_flight and now - self._batch_at > idle_after:
            self._batch_at = now
            with contextlib.suppress(ConnectionError):
                link.write(command("PING"))
                self._in_flight.append(_Batch([""], 0, 0, now, probe=True))
                self._answers_in.clear()

    def drop_link_nowait(self) -> None:
        """The subscription found Redis gone: this link cannot be trusted either."""
        if self._link is not None:
            self._link.abort("the subscription to Redis was lost")

    def _connect(self) -> None:
        if self._connecting is None and not self._closed:
            self._connecting = asyncio.get_running_loop().create_task(
                self._open(), name="redis-publisher-connect"
            )

    async def _open(self) -> None:
        try:
            link = await open_link(self._pool, self._on_reply)
        except Exception as exc:  # Redis cannot be reached: what waits is lost
            self._connecting = None
            batch, self.pending = self.pending, []
            upto = self._number()
            if batch:
                self._lost([(c, upto) for c, _ in batch], exc)
            else:
                log.warning("the publisher cannot reach Redis: %s", exc)
            return
        self._connecting = None
        self._adopt(link)
        self._write()

    async def connect(self) -> bool:
        """Open the link now (at start, and when Redis is back) rather than on the next
        publication; whether it is open."""
        if self._link is None or not self._link.is_open:
            self._connect()
        if self._connecting is not None:
            await asyncio.shield(self._connecting)
        return self._link is not None and self._link.is_open

    def _adopt(self, link: RedisLink) -> None:
        link.on_resume = self._resumed
        link.closed.add_done_callback(lambda _: self._link_lost(link))
        self._link = link

    def _resumed(self) -> None:
        if self.pending and self._timer is None:
            self._schedule()

    def _on_reply(self, reply: Any) -> None:
        if isinstance(reply, list):  # a push (RESP3: a server notice), not an answer
            return
        if not self._in_flight:  # nothing was asked: not an answer of ours
            log.warning("an unexpected reply from Redis to the publisher: %r", reply)
            return
        batch = self._in_flight[0]
        batch.receivers.append(reply)
        if len(batch.receivers) < len(batch.channels):
            return
        self._in_flight.popleft()
        if not self._in_flight:
            self._answers_in.set()
        if batch.probe:
            return
        errors = [r for r in batch.receivers if isinstance(r, Exception)]
        if errors:  # an error answer (an ACL, a busy script): that one was not delivered
            pairs = zip(batch.channels, batch.receivers, strict=True)
            refused = PublishRefused(f"Redis refused a publication: {errors[0]}")
            self._lost([(c, batch.upto) for c, r in pairs if isinstance(r, Exception)], refused)
            batch.receivers = [0 if isinstance(r, Exception) else r for r in batch.receivers]
        self._answered(batch.channels, batch.receivers, batch.heard)

    def _link_lost(self, link: RedisLink) -> None:
        if link is not self._link:
            return
        self._link = None
        lost = [(c, b.upto) for b in self._in_flight if not b.probe for c in b.channels]
        self._in_flight.clear()
        self._answers_in.set()
        if lost:
            exc = link.closed.exception() or ConnectionError("the Redis link was closed")
            self._lost(lost, exc)
        if self.pending and self._timer is None:
            self._schedule()  # on a new link

    async def aclose(self, wait: float = 1.0) -> None:
        """Write what is queued, wait at most `wait` s for its answers, close the link;
        what could not be written is reported lost."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._connecting is not None:
            await cancel_and_wait([self._connecting])
            self._connecting = None
        link = self._link
        if link is not None and link.is_open:
            self._write()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answers_in.wait(), wait)
            link.close()
        self._link = None
        if self.pending:
            batch, self.pending = self.pending, []
            upto = self._number()
            self._lost([(c, upto) for c, _ in batch], ConnectionError("closed before written"))
