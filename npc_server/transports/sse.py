"""The SSE transport: one `text/event-stream` response per client that only listens.

A stream is a `ClientLink` without a session: the node's watchdog ticks it
(write stalls, keep-alives) and drains it, and every close goes through
`request_close`. The body is an async iterable that Quart hands to Hypercorn
chunk by chunk; Quart asks for the next chunk only once Hypercorn's `send`
has returned, so the time between handing out a chunk and being asked again
is the write. Hypercorn's send waits for ever on a peer that stopped reading
(HYPERCORN-NOTES.md): when one write is pending over `write_timeout`, or the
stream falls too far behind, the task serving the request is cancelled,
which ends the response; the client comes back with `Last-Event-ID`.

A disconnect ends the stream at once: Quart cancels the request's task when
Hypercorn reports `http.disconnect`, and the body's `aclose` releases it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from quart import Response

from npc_server.node import Node
from npc_server.protocol.codes import CloseCode
from npc_server.protocol.frames import ServerFrame
from npc_server.transports.base import ClientLink

KEEPALIVE = b": keep-alive\n\n"
# EventSource waits this long before it reconnects (the `retry:` field), in ms.
RETRY_MS = 1000
RETRY = b"retry: %d\n" % RETRY_MS
HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    # nginx and similar proxies must pass each event on at once.
    "X-Accel-Buffering": "no",
}


def format_event(kind: str, data: bytes, event_id: str | None = None) -> bytes:
    """One SSE event: `id:` (when given), `event:` and one `data:` line of JSON.

    orjson never writes a newline, so the JSON always fits on one `data:` line.
    """
    head = f"event: {kind}\n" if event_id is None else f"id: {event_id}\nevent: {kind}\n"
    return b"%sdata: %s\n\n" % (head.encode(), data)


def frame_map(frame: ServerFrame) -> dict[str, Any]:
    """The frame as the map its msgpack encoding holds (`t` and the payload), minus `seq`."""
    body = frame.payload()
    body["t"] = frame.T
    return body


def frame_event(frame: ServerFrame, event_id: str | None = None) -> bytes:
    """A server frame as one SSE event named by its type."""
    return format_event(frame.T, orjson.dumps(frame_map(frame)), event_id)


def json_event(kind: str, fields: dict[str, Any], event_id: str | None = None) -> bytes:
    return format_event(kind, orjson.dumps(fields), event_id)


class SseStream(ClientLink):
    """One SSE client: hands out what it has to write, closes on stalls and requests."""

    def __init__(self, node: Node, *, transport: str, address: str, keepalive: float) -> None:
        super().__init__(node, "", transport=transport, address=address, heartbeat=False)
        self.keepalive = keepalive
        self._task: asyncio.Task[Any] | None = None
        self._last_write = node.clock()
        self._keepalive_due = False
        self._farewell_sent = False
        self._released = False
        self._prepared = False

    # --- what a kind of stream writes --------------------------------------

    def take_nowait(self) -> bytes:
        """Everything there is to write now (b"" when nothing)."""
        raise NotImplementedError

    def farewell(self) -> bytes:
        """The last chunk after a close was asked for (b"": none)."""
        return b""

    async def prepare(self) -> None:
        """Once, before the first event: what the stream must learn before it writes
        (nothing here). The stream is registered meanwhile, so a client that leaves
        during it is released as from any other wait."""

    # --- the body's side ---------------------------------------------------

    def bind_task(self, task: asyncio.Task[Any] | None) -> None:
        """The task that serves the response: cancelled when a write stalls."""
        self._task = task

    async def next_chunk(self) -> bytes:
        """The next bytes to send; waits until there are some. StopAsyncIteration at the end."""
        self.write_finished()
        if not self._prepared:
            self._prepared = True
            await self.prepare()
        while True:
            if self.closing.is_set():
                data = b"" if self._farewell_sent else self.farewell()
                self._farewell_sent = True
                if not data or self.close_code is CloseCode.SLOW_CONSUMER:
                    raise StopAsyncIteration
                break
            data = self.take_nowait()
            if data:
                break
            if self._keepalive_due:
                data = KEEPALIVE
                break
            self.ready.clear()
            await self.ready.wait()
        self._keepalive_due = False
        self._last_write = self.node.clock()
        self.write_started()
        return data

    def finish(self) -> None:
        """The response is over (sent, cancelled or disconnected): release once."""
        if not self._released:
            self._released = True
            if not self.closing.is_set():
                self.request_close(None, "the client left")
            self.release()

    # --- closing and timers ------------------------------------------------

    def request_close(self, code: CloseCode | None, reason: str = "") -> None:
        super().request_close(code, reason)
        self.ready.set()
        if code is CloseCode.SLOW_CONSUMER and self._write_started is not None:
            self._cancel_write()

    def _cancel_write(self) -> None:
        # The task is parked in Hypercorn's send: only a cancel gets it out.
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def tick(self, now: float) -> None:
        """The watchdog: a write pending too long closes the stream; idle ones get keep-alives."""
        super().tick(now)
        started = self._write_started
        if started is not None:
            if now - started > self.write_timeout:
                self._cancel_write()
        elif now - self._last_write >= self.keepalive and not self.closing.is_set():
            self._keepalive_due = True
            self.ready.set()


class SseBody:
    """A response body: starts its stream on the first read, releases it on `aclose`.

    Starting late means a request that ends before its body is read (a client
    gone during the handshake) never registers anything that would need a release.
    """

    def __init__(self, start: Callable[[], SseStream]) -> None:
        self._start = start
        self._stream: SseStream | None = None
        self._closed = False

    def __aiter__(self) -> SseBody:
        return self

    async def __anext__(self) -> bytes:
        stream = self._stream
        if stream is None:
            if self._closed:
                raise StopAsyncIteration
            stream = self._stream = self._start()
            stream.bind_task(asyncio.current_task())
            # At once, whether or not an event waits (a reconnect that is up to date
            # has none): a `retry:` line sets the delay as it is read, and with no
            # blank line after it, it is not an event of its own.
            return RETRY
        return await stream.next_chunk()

    async def aclose(self) -> None:
        self._closed = True
        if self._stream is not None:
            self._stream.finish()


def sse_response(body: SseBody) -> Response:
    """A `text/event-stream` response streaming `body`, uncompressed and without a timeout."""
    response = Response(body, status=200, content_type="text/event-stream", headers=HEADERS)
    response.timeout = None  # Quart's default would cut the stream after 60 s
    return response


def refusal(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """A plain-text refusal (401, 403, 404, 429, ...) before any stream starts."""
    return Response(message + "\n", status=status, content_type="text/plain", headers=headers)
