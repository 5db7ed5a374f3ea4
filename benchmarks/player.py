"""A protocol-v1 player on the lean client: hello, frames out, frames in.

Frames arrive as `(frame, received_at)` either through a callback (load
scenarios with thousands of players) or a queue (sequential measurements).
Server `ping`s are answered here, so idle players are never closed for a
missed heartbeat.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack

from benchmarks.wsclient import WsClient, connect

Frame = dict[str, Any]
OnFrame = Callable[[Frame, float], None]
TIMEOUT = 10.0


class ProtocolFailure(RuntimeError):
    """The server answered something other than the frame the benchmark waits for."""


class Player:
    """One authenticated connection to npc-server."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.client: WsClient | None = None
        self.on_frame: OnFrame | None = None
        self._frames: deque[tuple[Frame, float]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.session = ""
        self.last_seq = 0

    def _message(self, data: bytes, at: float) -> None:
        frame: Frame = msgpack.unpackb(data)
        seq = frame.get("seq")
        if seq is not None and frame.get("t") != "welcome":
            self.last_seq = seq
        if frame.get("t") == "ping":
            self.send({"t": "pong", "ts": frame.get("ts")})
            return
        if self.on_frame is not None:
            self.on_frame(frame, at)
            return
        self._frames.append((frame, at))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def open(
        self,
        host: str,
        port: int,
        token: str,
        *,
        rcvbuf: int = 0,
        resume: dict[str, Any] | None = None,
        hello_extra: Frame | None = None,
    ) -> Frame:
        """Connect, say hello (resuming a session when asked) and return the welcome."""
        self.client = await connect(host, port, "/ws", self._message, rcvbuf=rcvbuf)
        hello: Frame = {"t": "hello", "token": token, "client": "npc-bench", **(hello_extra or {})}
        if resume is not None:
            hello["resume"] = resume
        self.send(hello)
        welcome, _ = await self.recv()
        if welcome.get("t") != "welcome":
            raise ProtocolFailure(f"{self.name}: expected welcome, got {welcome}")
        self.session = str(welcome["session"])
        return welcome

    def send(self, frame: Frame) -> float:
        """Send one frame now; the time just before it was handed to the transport.

        Stamped before the write: the write can wake the server, which may run
        before this process gets the CPU back, so a stamp taken after it can
        be later than the answer.
        """
        assert self.client is not None
        sent = time.perf_counter()
        self.client.send(msgpack.packb(frame))
        return sent

    async def recv(self, timeout: float = TIMEOUT) -> tuple[Frame, float]:
        """The next frame and its arrival time (queue mode only)."""
        async with asyncio.timeout(timeout):
            while not self._frames:
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter
        return self._frames.popleft()

    async def expect(self, t: str, timeout: float = TIMEOUT) -> tuple[Frame, float]:
        """Skip frames until one of type `t`."""
        async with asyncio.timeout(timeout):
            while True:
                frame, at = await self.recv(timeout)
                if frame.get("t") == t:
                    return frame, at
                if frame.get("t") == "error":
                    raise ProtocolFailure(f"{self.name}: server error {frame}")

    async def expect_match(
        self, t: str, timeout: float = TIMEOUT, **keys: Any
    ) -> tuple[Frame, float]:
        """Skip frames until one of type `t` whose `keys` have the given values."""
        async with asyncio.timeout(timeout):
            while True:
                frame, at = await self.expect(t, timeout)
                if all(frame.get(k) == v for k, v in keys.items()):
                    return frame, at

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


async def open_players(
    count: int,
    host: str,
    port: int,
    token_for: Callable[[str], str],
    *,
    prefix: str = "p",
    concurrency: int = 200,
    rcvbuf: Callable[[int], int] = lambda index: 0,
    timeout: float = 120.0,
    hello_extra: Frame | None = None,
) -> list[Player]:
    """Connect and authenticate `count` players, at most `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)
    players = [Player(f"{prefix}{i}") for i in range(count)]

    async def one(index: int, player: Player) -> None:
        async with gate:
            token = token_for(player.name)
            await player.open(host, port, token, rcvbuf=rcvbuf(index), hello_extra=hello_extra)

    async with asyncio.timeout(timeout):
        await asyncio.gather(*(one(i, p) for i, p in enumerate(players)))
    return players


def close_players(players: list[Player]) -> None:
    for player in players:
        player.close()
