"""A fake OpenAI-compatible model server that paces every stream, for the relay section.

Usage: python -m benchmarks.fake_openai [--port 0] --tokens-per-second 20 --first-token-ms 50

`POST /v1/chat/completions` with `stream: true` answers with the wire format
of vLLM and the hosted API (as tests/backends/openai_stub.py): a chunked
`text/event-stream` of `data: {json}` events, a role chunk with the first
content piece `first_token_ms` after the request, then one content piece
every `1 / tokens_per_second`, a finish chunk, a usage chunk when asked and
`data: [DONE]`. HTTP/1.1 keep-alive. The reply is `PIECES` words (the way
the scripted backend splits text, so the load counts pieces as tokens).

Lean on purpose (a raw asyncio protocol on uvloop, one event-loop timer per
piece, each chunk pre-encoded): it shares its core with the load process, and
its CPU is reported beside the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import cast

from benchmarks.baselines.listener import announce, listening_socket, run

PIECES = 20
WORDS = [f"word{k} " for k in range(PIECES - 1)] + ["end."]
HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


def _event(doc: dict[str, object] | str) -> bytes:
    data = (doc if isinstance(doc, str) else json.dumps(doc, separators=(",", ":"))).encode()
    body = b"data: " + data + b"\n\n"
    return f"{len(body):x}\r\n".encode() + body + b"\r\n"


def _chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    doc = {"id": "cmpl-bench", "object": "chat.completion.chunk", "created": 0}
    return _event({**doc, "model": "bench", "choices": [choice]})


FIRST = _chunk({"role": "assistant", "content": WORDS[0]})
PIECE_EVENTS = [FIRST] + [_chunk({"content": word}) for word in WORDS[1:]]
USAGE = _event(
    {
        "id": "cmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "bench",
        "choices": [],
        "usage": {"prompt_tokens": 20, "completion_tokens": PIECES, "total_tokens": PIECES + 20},
    }
)
TAIL = _chunk({}, "stop")
DONE = _event("[DONE]") + b"0\r\n\r\n"


class FakeModel(asyncio.Protocol):
    """One HTTP/1.1 connection: requests one after another, each answered by a paced stream."""

    def __init__(self, first_s: float, interval_s: float) -> None:
        self.first_s, self.interval_s = first_s, interval_s
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()  # the client left mid-stream: stop "generating"
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].decode("latin-1").lower()
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name == "content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        body = self.buffer[end + 4 : end + 4 + length]
        self.buffer = self.buffer[end + 4 + length :]
        self._answer(head.split(" ", 2)[1], body)

    def _answer(self, path: str, body: bytes) -> None:
        assert self.transport is not None
        if not path.endswith("/chat/completions"):
            self.transport.write(NOT_FOUND)
            return
        usage = b'"include_usage":true' in body.replace(b" ", b"")
        self.transport.write(HEAD)
        start = self.loop.time() + self.first_s
        self.timer = self.loop.call_at(start, self._piece, start, 0, usage)

    def _piece(self, start: float, index: int, usage: bool) -> None:
        if self.transport is None:
            return
        if index < PIECES:
            self.transport.write(PIECE_EVENTS[index])
            # Absolute deadlines: the rate is exact, whatever a callback's delay.
            due = start + (index + 1) * self.interval_s
            self.timer = self.loop.call_at(due, self._piece, start, index + 1, usage)
            return
        self.timer = None
        self.transport.write(TAIL + (USAGE if usage else b"") + DONE)


async def main(host: str, port: int, tokens_per_second: float, first_token_ms: float) -> None:
    sock = listening_socket(host, port)
    announce("fake-openai", sock)
    loop = asyncio.get_running_loop()
    first, interval = first_token_ms / 1000, 1 / tokens_per_second
    server = await loop.create_server(lambda: FakeModel(first, interval), sock=sock)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens-per-second", type=float, default=20.0)
    parser.add_argument("--first-token-ms", type=float, default=50.0)
    args = parser.parse_args()
    run(main(args.host, args.port, args.tokens_per_second, args.first_token_ms), use_uvloop=True)
