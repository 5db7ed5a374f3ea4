"""A small raw-protocol WebSocket client for tests: msgpack maps in and out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import websockets
from websockets.asyncio.client import ClientConnection

from npc_server.protocol.codes import CloseCode

Frame = dict[str, Any]
TIMEOUT = 10.0


class RawClient:
    """Speaks protocol v1 frame by frame; the tests decide every step."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[Frame] = []
        self.last_seq = 0
        self.session: str | None = None

    async def send(self, frame: Frame) -> None:
        await self.ws.send(msgpack.packb(frame))

    async def send_raw(self, data: bytes | str) -> None:
        await self.ws.send(data)

    async def recv(self, timeout: float = TIMEOUT) -> Frame:
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(data, bytes), f"server sent a text message: {data!r}"
        frame: Frame = msgpack.unpackb(data)
        self.received.append(frame)
        if "seq" in frame and frame.get("t") != "welcome":
            assert frame["seq"] == self.last_seq + 1, f"seq gap: {self.last_seq} then {frame}"
            self.last_seq = frame["seq"]
        return frame

    async def recv_until(
        self, done: Callable[[Frame], bool], timeout: float = TIMEOUT
    ) -> list[Frame]:
        """Frames up to and including the first one for which `done` is true."""
        frames: list[Frame] = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if frame.get("t") == "ping":
                    await self.send({"t": "pong", "ts": frame.get("ts")})
                frames.append(frame)
                if done(frame):
                    return frames

    async def expect(self, t: str, timeout: float = TIMEOUT) -> Frame:
        """Skip frames until one of type `t` arrives."""
        frames = await self.recv_until(lambda f: f.get("t") == t, timeout)
        return frames[-1]

    async def hello(self, token: str, resume: dict[str, Any] | None = None) -> Frame:
        frame: Frame = {"t": "hello", "token": token}
        if resume is not None:
            frame["resume"] = resume
        await self.send(frame)
        welcome = await self.recv()
        assert welcome["t"] == "welcome", welcome
        self.session = welcome["session"]
        self.last_seq = welcome["seq"] if welcome.get("resumed") else 0
        if resume is not None and welcome.get("resumed"):
            self.last_seq = resume["seq"]
        return welcome

    async def close_code(self, timeout: float = TIMEOUT) -> int | None:
        """Read until the server closes; the close code it sent."""
        try:
            async with asyncio.timeout(timeout):
                async for _ in self.ws:
                    pass
        except websockets.ConnectionClosed:
            pass
        await asyncio.wait_for(self.ws.wait_closed(), timeout)
        return self.ws.close_code


@asynccontextmanager
async def connect(url: str, **kwargs: Any) -> AsyncIterator[RawClient]:
    """Open a socket (no compression, like game clients) and yield a `RawClient`."""
    kwargs.setdefault("compression", None)
    kwargs.setdefault("max_size", 2**22)
    # Frames a test never reads (presence of others) must not stall the close handshake.
    kwargs.setdefault("max_queue", None)
    async with websockets.connect(url, **kwargs) as ws:
        yield RawClient(ws)


async def session_for(url: str, token: str) -> tuple[Any, RawClient]:
    """An open, authenticated client that the caller closes."""
    ws = await websockets.connect(url, compression=None)
    client = RawClient(ws)
    await client.hello(token)
    return ws, client


async def refused_hello(url: str, token: str, resume: dict[str, Any] | None = None) -> str:
    """Say hello on a new socket that the server must refuse with 4508; its reason."""
    async with connect(url) as client:
        frame: dict[str, Any] = {"t": "hello", "token": token}
        await client.send(frame if resume is None else {**frame, "resume": resume})
        assert await client.close_code() == CloseCode.KICKED
        reason: str = client.ws.close_reason or ""
        return reason
