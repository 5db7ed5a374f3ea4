"""Action webhooks: every action event POSTed, signed, to the game's `{url}/events`.

Turns hand events over with `send_nowait`, which never waits: the event goes
into a bounded queue, or is dropped (counted, logged) when the queue is full.
A few worker tasks deliver them, each with retries and exponential backoff,
so a slow, failing or absent game server costs queue slots, never turn time.
Each event carries an idempotency key (`id`, also the `Idempotency-Key`
header) that stays the same across retries, so the game applies it once.
A URL that cannot be used at all drops each event at once (no retry would
change it), and whatever else goes wrong with one event drops that event:
counted and logged, a worker never ends before the sender closes.

When the server stops, `stop_within` gives the deliveries a deadline (the
drain's grace): `flush` and `aclose` wait for the queue until then, retrying
as usual, and what is still queued or in flight when the workers end is
counted as `dropped_shutdown` and named in one WARNING, never lost silently.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from npc_server.cancelling import cancel_and_wait
from npc_server.game_http import (
    SIGNATURE_HEADER,
    GameHttpError,
    HttpAnswer,
    UnusableUrl,
    post_json,
    signature,
)
from npc_server.logs import sparse
from npc_server.redaction import redacted_url
from npc_server.settings import GameSection
from npc_server.turns import ActionNotice

log = logging.getLogger(__name__)

Post = Callable[[str, bytes, Mapping[str, str], float], Awaitable[HttpAnswer]]
Sleep = Callable[[float], Awaitable[None]]
# Answers worth another try: the game server may take it later.
RETRY_STATUSES = frozenset({408, 425, 429})
LOST_IDS_LOGGED = 5  # the stop's WARNING names this many of the events it gave up


@dataclass(frozen=True, slots=True)
class WebhookStatistics:
    """Counts since start: what is waiting, delivered, retried and dropped (and why), and
    the deliveries that crashed (`bugs`, each also among `dropped_failed`)."""

    queued: int
    delivered: int
    retries: int
    dropped_full: int
    dropped_failed: int
    dropped_rejected: int
    dropped_shutdown: int
    bugs: int


def action_event(notice: ActionNotice, now: float) -> dict[str, Any]:
    """The JSON body of one action event."""
    return {
        "id": f"{notice.action}:{notice.status}",
        "type": "action",
        "event": notice.status,
        "ts": int(now),
        "action": {
            "id": notice.action,
            "name": notice.name,
            "args": dict(notice.args),
            "approval": notice.approval,
            "at": notice.at,
        },
        "turn": notice.turn,
        "npc": notice.npc,
        "player": notice.player,
        "room": notice.room,
        # accepted / declined: the member who answered (any member, in a room turn the
        # game started); null for the other events.
        "answered_by": notice.answered_by,
    }


class WebhookSender:
    """The bounded queue of events for the game server, and the tasks delivering them."""

    def __init__(
        self,
        settings: GameSection,
        secret: str | None,
        *,
        post: Post = post_json,
        sleep: Sleep = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.url = f"{settings.url}/events" if settings.url else None
        self._secret = secret
        self._post = post
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._clock = clock
        # (idempotency key, body): the body is encoded once, for every attempt.
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(settings.webhook_queue)
        self._workers: list[asyncio.Task[None]] = []
        self._delivered = self._retries = self._seq = self._bugs = 0
        self._dropped = {"full": 0, "failed": 0, "rejected": 0, "shutdown": 0}
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight: list[str] = []  # the keys the workers are delivering, oldest first
        self._deadline: float | None = None  # the stop's, on `clock` (`stop_within`)
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self.url is not None

    def notify(self, notice: ActionNotice) -> None:
        """A conversation's `on_action`: queue the event for the game server."""
        self._seq += 1
        self.send_nowait({**action_event(notice, self._wall_clock()), "seq": self._seq})

    def send_nowait(self, event: Mapping[str, Any]) -> bool:
        """Queue one event; False when there is no game server or the queue is full."""
        if self.url is None:
            return False
        if self._closed:
            self._drop("shutdown", str(event.get("id")), "the server has stopped")
            return False
        try:
            self._queue.put_nowait((str(event.get("id", "")), orjson.dumps(event)))
        except asyncio.QueueFull:
            why = f"the queue is full ({self.settings.webhook_queue} events)"
            self._drop("full", str(event.get("id")), why)
            return False
        self._idle.clear()
        return True

    def start(self) -> None:
        """Start the delivery tasks (in the running loop); nothing to do without a URL."""
        if self.url is None or self._workers:
            return
        for n in range(self.settings.webhook_workers):
            self._workers.append(asyncio.create_task(self._work(), name=f"webhook-{n}"))

    def stop_within(self, seconds: float) -> None:
        """The server stops: deliveries go on, retried as usual, for at most `seconds`
        more, which `flush` and `aclose` wait for (an earlier deadline is kept)."""
        deadline = self._clock() + max(seconds, 0.0)
        self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)

    async def flush(self, at_most: float = math.inf) -> bool:
        """Wait until every queued event was delivered or dropped, up to the stop's
        deadline (no wait before `stop_within`) and `at_most` seconds; whether it was."""
        left = 0.0 if self._deadline is None else self._deadline - self._clock()
        left = min(left, at_most)
        if left > 0 and not self._idle.is_set():
            try:
                async with asyncio.timeout(left):
                    await self._idle.wait()
            except TimeoutError:
                pass
        return self._idle.is_set()

    async def aclose(self, at_most: float = math.inf) -> None:
        """Stop delivering, after `flush(at_most)`: what is still queued or in flight then
        is given up, counted as `dropped_shutdown` and logged once. Never raises: what went
        wrong in a delivery was counted and logged there."""
        await self.flush(at_most)
        self._closed = True
        lost = list(self._in_flight)  # no await until the cancel: exactly these are cut
        await cancel_and_wait(self._workers)
        self._workers.clear()
        while not self._queue.empty():
            lost.append(self._queue.get_nowait()[0])
        if lost:
            self._lost_at_stop(lost)

    async def idle(self) -> None:
        """Return once every queued event was delivered or dropped (for tests, drains)."""
        await self._idle.wait()

    def statistics(self) -> WebhookStatistics:
        return WebhookStatistics(
            queued=self._queue.qsize(),
            delivered=self._delivered,
            retries=self._retries,
            dropped_full=self._dropped["full"],
            dropped_failed=self._dropped["failed"],
            dropped_rejected=self._dropped["rejected"],
            dropped_shutdown=self._dropped["shutdown"],
            bugs=self._bugs,
        )

    async def _work(self) -> None:
        while True:
            key, body = await self._queue.get()
            self._in_flight.append(key)
            try:
                await self._deliver(key, body)
            except Exception as exc:  # a bug: the event is lost, the worker goes on
                self._crashed(key, exc)
            finally:
                self._in_flight.remove(key)
                if not self._in_flight and self._queue.empty():
                    self._idle.set()

    async def _deliver(self, key: str, body: bytes) -> None:
        """Every attempt at one event: success, a final answer, or retries run out."""
        s = self.settings
        for attempt in range(s.webhook_retries + 1):
            if attempt:
                self._retries += 1
                await self._sleep(
                    min(s.webhook_backoff_s * 2 ** (attempt - 1), s.webhook_backoff_max_s)
                )
            try:
                problem = await self._attempt(key, body)
            except UnusableUrl as exc:
                self._drop("failed", key, f"{exc}, not retried")
                return
            if problem is None:
                self._delivered += 1
                return
            if problem.startswith("rejected"):
                self._drop("rejected", key, problem)
                return
        self._drop("failed", key, f"{problem}, after {s.webhook_retries + 1} attempts")

    async def _attempt(self, key: str, body: bytes) -> str | None:
        """One POST; None when delivered, else what went wrong (`UnusableUrl` raised: no
        other attempt can go better)."""
        assert self.url is not None
        headers = {"Idempotency-Key": key}
        if self._secret:
            headers[SIGNATURE_HEADER] = signature(self._secret, body, int(self._wall_clock()))
        try:
            answer = await self._post(self.url, body, headers, self.settings.webhook_timeout_s)
        except UnusableUrl:
            raise
        except GameHttpError as exc:
            return str(exc)
        if 200 <= answer.status < 300:
            return None
        if answer.status >= 500 or answer.status in RETRY_STATUSES:
            return f"HTTP {answer.status}"
        return f"rejected with HTTP {answer.status}"

    def _drop(self, why: str, key: str, problem: str) -> None:
        self._dropped[why] += 1
        count = self._dropped[why]
        # The 1st, 2nd, 4th, 8th ... drop of each kind: a game server that is down
        # for an hour is in the log, without a line per event.
        if sparse(count):
            log.warning(
                "webhook %s to %s dropped: %s (%d dropped so far for this reason)",
                key,
                redacted_url(self.url or ""),
                problem,
                count,
            )

    def _lost_at_stop(self, keys: list[str]) -> None:
        # One line for the whole stop, however many: the count and the first few ids, so
        # the game can look them up (an event cut in flight may have reached it).
        self._dropped["shutdown"] += len(keys)
        more = len(keys) - LOST_IDS_LOGGED
        log.warning(
            "%d webhook events to %s not delivered before the server stopped "
            "(dropped_shutdown, %d so far): %s%s",
            len(keys),
            redacted_url(self.url or ""),
            self._dropped["shutdown"],
            ", ".join(keys[:LOST_IDS_LOGGED]),
            f" and {more} more" if more > 0 else "",
        )

    def _crashed(self, key: str, exc: Exception) -> None:
        # A bug in one delivery: the event counts as failed; the log says ERROR, with the
        # traceback, as sparsely as drops, but counted apart so that a bug is never
        # hidden by an outage's drops.
        self._dropped["failed"] += 1
        self._bugs += 1
        if sparse(self._bugs):
            log.error(
                "webhook %s to %s dropped: its delivery failed (%d so far)",
                key,
                redacted_url(self.url or ""),
                self._bugs,
                exc_info=exc,
            )
