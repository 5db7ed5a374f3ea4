"""A real HTTP/1.1 server on 127.0.0.1 that speaks OpenAI chat-completions streaming.

It stands in for vLLM, llama.cpp or the hosted API in tests, with the wire
format those servers use: a chunked `text/event-stream` body of
`data: {json}\\n\\n` events (role chunk, content deltas, tool-call argument
fragments by `index`, a `finish_reason` chunk, a usage chunk with `choices: []`
when `stream_options.include_usage` was sent) ending in `data: [DONE]`, and
errors as `{"error": {"message", "type", "code"}}` JSON bodies.

Tests queue scenarios with `script()`; each request takes the next one. The
stub records every request and notices at once when a client drops a
connection whose response was still streaming (`RecordedRequest.gone`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Self

# Steps of a streamed response.


@dataclass(frozen=True)
class Chunk:
    """One `chat.completion.chunk` event with this delta (and finish reason)."""

    delta: Mapping[str, Any]
    finish_reason: str | None = None


@dataclass(frozen=True)
class Raw:
    """An event whose data is sent verbatim (e.g. malformed JSON)."""

    data: str


@dataclass(frozen=True)
class Usage:
    """The usage chunk; sent only when the request asked for include_usage."""

    prompt_tokens: int = 12
    completion_tokens: int = 5


@dataclass(frozen=True)
class Bytes:
    """Body bytes sent verbatim (any framing: CRLF, comments, multi-line data ...)."""

    data: bytes


@dataclass(frozen=True)
class Hang:
    """Send nothing more until the client goes away."""


@dataclass(frozen=True)
class Reset:
    """Abort the TCP connection with a RST, mid-body."""


@dataclass(frozen=True)
class Done:
    """`data: [DONE]`; the body ends after it."""


Step = Chunk | Raw | Bytes | Usage | Hang | Reset | Done


@dataclass(frozen=True)
class ToolCall:
    """A tool call streamed as id+name first, then one chunk per argument fragment."""

    name: str
    fragments: Sequence[str] = ()
    id: str = "call_0"


@dataclass(frozen=True)
class StreamScenario:
    steps: tuple[Step, ...]
    hang_before_headers: bool = False  # accept the request, never answer it
    split: int = 0  # >0: send the body in HTTP chunks of this many bytes, each flushed alone


@dataclass(frozen=True)
class ErrorScenario:
    status: int
    message: str = "upstream failure"
    type: str = "server_error"
    code: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EndlessScenario:
    """Content chunks forever, one every `interval_s`, until the client leaves."""

    text: str = "la "
    interval_s: float = 0.002


Scenario = StreamScenario | ErrorScenario | EndlessScenario


def reply(*parts: str | ToolCall, finish: str | None = None, usage: bool = True) -> StreamScenario:
    """A complete, well-formed stream: role, text and tool calls, finish, usage, [DONE]."""
    steps: list[Step] = [Chunk({"role": "assistant", "content": ""})]
    calls = 0
    for part in parts:
        if isinstance(part, str):
            steps.append(Chunk({"content": part}))
            continue
        head = {"index": calls, "id": part.id, "type": "function"}
        head["function"] = {"name": part.name, "arguments": ""}
        steps.append(Chunk({"tool_calls": [head]}))
        for fragment in part.fragments:
            arguments = {"index": calls, "function": {"arguments": fragment}}
            steps.append(Chunk({"tool_calls": [arguments]}))
        calls += 1
    steps.append(Chunk({}, finish or ("tool_calls" if calls else "stop")))
    if usage:
        steps.append(Usage())
    steps.append(Done())
    return StreamScenario(tuple(steps))


def partial(*texts: str, then: Step) -> StreamScenario:
    """Role chunk and some text, then `then` (Hang, Reset, Raw, Done ...)."""
    steps: list[Step] = [Chunk({"role": "assistant", "content": ""})]
    steps += [Chunk({"content": t}) for t in texts]
    return StreamScenario((*steps, then))


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    finished: bool = False  # the whole response was written
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # client left mid-response
    gone_at: float | None = None  # loop.time() when it did


class _Connection:
    """Reads everything the client sends, so a close is seen the moment it happens."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buffer = bytearray()
        self.data = asyncio.Event()
        self.closed = asyncio.Event()
        self.current: RecordedRequest | None = None
        self.pump = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await self.reader.read(65536):
                self.buffer += data
                self.data.set()
        request = self.current
        if request is not None and not request.finished:
            request.gone_at = asyncio.get_running_loop().time()
            request.gone.set()
        self.closed.set()
        self.data.set()

    async def read_until(self, marker: bytes) -> bytes | None:
        while (end := self.buffer.find(marker)) < 0:
            if not await self._more():
                return None
        return self._take(end + len(marker))

    async def read_exactly(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not await self._more():
                return None
        return self._take(size)

    async def _more(self) -> bool:
        if self.closed.is_set():
            return False
        self.data.clear()
        await self.data.wait()
        return not self.closed.is_set() or bool(self.buffer)

    def _take(self, size: int) -> bytes:
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        return out

    async def send(self, data: bytes) -> bool:
        if self.closed.is_set() or self.writer.is_closing():
            return False
        self.writer.write(data)
        try:
            await self.writer.drain()
        except ConnectionError:
            return False
        return True

    def reset(self) -> None:
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


class OpenAIStub:
    """The server. Use as `async with OpenAIStub() as stub:`; point clients at `base_url`."""

    def __init__(
        self, default: Scenario | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.default = default or reply("Hello", " there", "!")
        self._ssl = ssl_context  # serve https with it
        self.requests: list[RecordedRequest] = []
        self.request_seen = asyncio.Event()  # set on every request read
        self._script: deque[Scenario] = deque()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self.connections_accepted = 0
        self._no_connections = asyncio.Event()
        self._no_connections.set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._ssl)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for conn in list(self._connections):
            conn.writer.transport.abort()
        await asyncio.wait_for(self._no_connections.wait(), 1.0)
        await self._server.wait_closed()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://127.0.0.1:{port}/v1"

    def script(self, *scenarios: Scenario) -> None:
        """Queue scenarios for the next requests; after them, `default` answers."""
        self._script.extend(scenarios)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def no_connections(self) -> None:
        """Return once every client connection is closed."""
        await self._no_connections.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(reader, writer)
        self._connections.add(conn)
        self.connections_accepted += 1
        self._no_connections.clear()
        try:
            while (request := await self._read_request(conn)) is not None:
                conn.current = request
                self.requests.append(request)
                self.request_seen.set()
                scenario = self._script.popleft() if self._script else self.default
                if not await self._respond(conn, request, scenario):
                    break
                request.finished = True
        finally:
            writer.transport.abort()
            await conn.pump
            self._connections.discard(conn)
            if not self._connections:
                self._no_connections.set()

    async def _read_request(self, conn: _Connection) -> RecordedRequest | None:
        head = await conn.read_until(b"\r\n\r\n")
        if head is None:
            return None
        line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        method, path, _version = line.split(" ", 2)
        headers = {}
        for header in header_lines:
            name, _, value = header.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await conn.read_exactly(int(headers.get("content-length", "0")))
        if body is None:
            return None
        return RecordedRequest(method, path, headers, json.loads(body) if body else None)

    async def _respond(self, conn: _Connection, request: RecordedRequest, sc: Scenario) -> bool:
        """Write one response; False when the connection must not be reused."""
        if request.path != "/v1/chat/completions" or request.method != "POST":
            sc = ErrorScenario(404, f"no route {request.path}", "invalid_request_error")
        if isinstance(sc, ErrorScenario):
            return await self._send_error(conn, sc)
        if isinstance(sc, StreamScenario) and sc.hang_before_headers:
            await conn.closed.wait()
            return False
        head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
        head += "cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        if not await conn.send(head.encode()):
            return False
        stream = _EventWriter(conn, request.body, sc.split if isinstance(sc, StreamScenario) else 0)
        if isinstance(sc, EndlessScenario):
            while await stream.chunk({"content": sc.text}):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(conn.closed.wait(), sc.interval_s)
            return False
        for step in sc.steps:
            if isinstance(step, Hang):
                await conn.closed.wait()
                return False
            if isinstance(step, Reset):
                request.finished = True  # the server left, not the client
                conn.reset()
                return False
            if not await stream.step(step):
                return False
        return await conn.send(b"0\r\n\r\n")

    async def _send_error(self, conn: _Connection, sc: ErrorScenario) -> bool:
        error = {"message": sc.message, "type": sc.type, "param": None, "code": sc.code}
        body = json.dumps({"error": error}).encode()
        head = f"HTTP/1.1 {sc.status} {HTTPStatus(sc.status).phrase}\r\n"
        head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in sc.headers.items())
        return await conn.send(head.encode() + b"\r\n" + body)


class EventEncoder:
    """Renders steps as SSE bytes, filling in the fields real servers send."""

    def __init__(self, model: str = "stub", include_usage: bool = True) -> None:
        self.model = model
        self.include_usage = include_usage

    @classmethod
    def for_request(cls, body: Any) -> EventEncoder:
        model = body.get("model", "stub") if isinstance(body, dict) else "stub"
        options = body.get("stream_options") if isinstance(body, dict) else None
        return cls(model, bool(options and options.get("include_usage")))

    def render(self, step: Chunk | Raw | Bytes | Usage | Done) -> bytes:
        if isinstance(step, Bytes):
            return step.data
        if isinstance(step, Chunk):
            return self.chunk(step.delta, step.finish_reason)
        if isinstance(step, Raw):
            return self.event(step.data)
        if isinstance(step, Usage):
            if not self.include_usage:
                return b""
            total = step.prompt_tokens + step.completion_tokens
            usage = {
                "prompt_tokens": step.prompt_tokens,
                "completion_tokens": step.completion_tokens,
            }
            return self.event(json.dumps(self._frame([], {**usage, "total_tokens": total})))
        return self.event("[DONE]")

    def body(self, scenario: StreamScenario) -> bytes:
        """The whole body of a scenario that only sends (no Hang or Reset)."""
        steps = [s for s in scenario.steps if not isinstance(s, Hang | Reset)]
        assert len(steps) == len(scenario.steps), "Hang and Reset have no bytes"
        return b"".join(self.render(s) for s in steps)

    def chunk(self, delta: Mapping[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {
            "index": 0,
            "delta": dict(delta),
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        return self.event(json.dumps(self._frame([choice], None)))

    def _frame(self, choices: list[Any], usage: Mapping[str, int] | None) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "id": "chatcmpl-stub",
            "object": "chat.completion.chunk",
            "created": 1700000000,
        }
        frame |= {"model": self.model, "system_fingerprint": None, "choices": choices}
        if self.include_usage:
            frame["usage"] = usage  # OpenAI sends "usage": null on every other chunk
        return frame

    def event(self, data: str) -> bytes:
        return f"data: {data}\n\n".encode()


class _EventWriter:
    """Writes rendered steps as HTTP chunks (of `split` bytes each, if set)."""

    def __init__(self, conn: _Connection, body: Any, split: int = 0) -> None:
        self.conn = conn
        self.split = split
        self.encoder = EventEncoder.for_request(body)

    async def step(self, step: Chunk | Raw | Bytes | Usage | Done) -> bool:
        return await self.send(self.encoder.render(step))

    async def chunk(self, delta: Mapping[str, Any]) -> bool:
        return await self.send(self.encoder.chunk(delta))

    async def send(self, payload: bytes) -> bool:
        size = self.split or len(payload) or 1
        for start in range(0, len(payload), size):
            part = payload[start : start + size]
            if not await self.conn.send(b"%x\r\n%s\r\n" % (len(part), part)):
                return False
        return True
