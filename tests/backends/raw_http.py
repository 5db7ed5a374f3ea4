"""A loopback HTTP/1.1 server that answers each request with scripted raw bytes.

For what the stub (openai_stub.py) cannot send: a response's framing itself
split at any byte, bodies framed by length or by the connection's end, a
close in the middle of a chunk, heads that never end. Each request takes the
next `RawReply`; the server records how many connections it accepted and
notices each one closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self


@dataclass(frozen=True)
class RawReply:
    """Bytes written one part per write (flushed apart); then keep the connection or close it."""

    parts: Sequence[bytes]
    close: bool = False  # close (FIN) after the last part
    hang: bool = False  # after the parts, wait for the client to leave


def chunked(body: bytes, head: str = "content-type: text/event-stream\r\n") -> bytes:
    """A 200 response carrying `body` as one HTTP chunk."""
    start = f"HTTP/1.1 200 OK\r\n{head}transfer-encoding: chunked\r\n\r\n".encode()
    return start + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


class RawServer:
    """`async with RawServer() as server:`; `server.base_url` ends in /v1."""

    def __init__(self) -> None:
        self._replies: deque[RawReply] = deque()
        self._server: asyncio.Server | None = None
        self.connections_accepted = 0
        self.requests = 0
        self.closed = asyncio.Event()  # set each time a client connection ends
        self.closes = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        await self._server.wait_closed()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    def script(self, *replies: RawReply) -> None:
        """Queue replies for the next requests."""
        self._replies.extend(replies)

    async def wait_closes(self, count: int) -> None:
        """Return once `count` client connections have ended in all."""
        while self.closes < count:
            self.closed.clear()
            await self.closed.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while await self._read_request(reader):
                self.requests += 1
                reply = self._replies.popleft()
                for part in reply.parts:
                    writer.write(part)
                    await writer.drain()
                if reply.hang:
                    await reader.read()
                if reply.close or reply.hang:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.closes += 1
            self.closed.set()
            self._tasks.discard(task)

    async def _read_request(self, reader: asyncio.StreamReader) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        length = 0
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        return True
