"""Clients for the stress scenarios.

- `open_client`: a `RawClient`, optionally on a socket with a tiny receive
  buffer so that a paused reader stalls the server after a few KB instead of
  the megabytes loopback autotuning would accept.
- `Member`: a client whose frames are read in the background (pings
  answered), so a scenario can run many at once and check their turns.
- `SilentSocket`: a WebSocket peer on a plain socket that says hello and
  then neither reads nor writes again: a half-open connection.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgpack
import websockets

from tests.support.client import Frame, RawClient

NPCS = ("guard", "merchant", "questgiver")
# Says that every demo NPC answers with a topic (long replies pad them further).
SAYS = {
    "guard": "tell me about the gate",
    "merchant": "any rumours from the road?",
    "questgiver": "do you have a quest for me?",
}
READ_FOREVER = 3600.0  # the reader task is cancelled or ends with the socket
HANDSHAKE_LIMIT = 65536
HANDSHAKE_TIMEOUT = 10.0


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    return parts.hostname, parts.port


async def open_client(url: str, *, rcvbuf: int | None = None, **kwargs: Any) -> RawClient:
    """A connected `RawClient` (no compression, no WebSocket-level keepalive)."""
    kwargs.setdefault("compression", None)
    kwargs.setdefault("max_size", 2**22)
    kwargs.setdefault("max_queue", None)
    kwargs.setdefault("ping_interval", None)
    kwargs.setdefault("open_timeout", 60)
    kwargs.setdefault("proxy", None)
    if rcvbuf is not None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Set before connecting: the window is fixed and autotuning is off.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, address(url))
        except BaseException:
            sock.close()
            raise
        kwargs["sock"] = sock
    ws = await websockets.connect(url, **kwargs)
    return RawClient(ws)


def close_received(client: RawClient) -> int | None:
    """The code of the close frame the server sent, once received (even mid-handshake)."""
    received = client.ws.protocol.close_rcvd
    return None if received is None else int(received.code)


def local_port(client: RawClient) -> int:
    sockname = client.ws.transport.get_extra_info("sockname")
    port: int = sockname[1]
    return port


def joined_text(frames: list[Frame], turn: str) -> str:
    """The turn's text from its deltas, checking that each starts where the last ended."""
    text = ""
    for frame in frames:
        if frame.get("t") == "delta" and frame.get("turn") == turn:
            assert frame["at"] == len(text), f"delta at {frame['at']} after {len(text)} chars"
            text += frame["text"]
    return text


@dataclass
class TurnSeen:
    """What one client saw of one turn."""

    start: Frame | None = None
    text: str = ""
    end: Frame | None = None
    gaps: list[str] = field(default_factory=list)


class Member:
    """A client read by a background task; frames are kept with their arrival time."""

    def __init__(self, client: RawClient, name: str) -> None:
        self.client = client
        self.name = name
        self.frames: list[tuple[float, Frame]] = []
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read(), name=f"member-{name}")

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await self.client.recv(timeout=READ_FOREVER)
                self.client.received.clear()  # kept once, in self.frames
                if frame.get("t") == "ping":
                    await self.client.send({"t": "pong", "ts": frame.get("ts")})
                self.frames.append((loop.time(), frame))
                self._changed.set()
        except websockets.ConnectionClosed:
            self.close_code = self.client.ws.close_code
        finally:
            self.closed.set()
            self._changed.set()

    async def send(self, frame: Frame) -> int:
        """Send a frame; returns the index of the first frame that can answer it."""
        index = len(self.frames)
        await self.client.send(frame)
        return index

    async def wait_for(
        self, predicate: Callable[[Frame], bool], since: int = 0, timeout: float = 30.0
    ) -> Frame:
        """The first frame from index `since` on for which `predicate` holds."""
        async with asyncio.timeout(timeout):
            while True:
                for _, frame in self.frames[since:]:
                    if predicate(frame):
                        return frame
                since = len(self.frames)
                if self.closed.is_set():
                    raise AssertionError(f"{self.name} closed ({self.close_code}) while waiting")
                self._changed.clear()
                await self._changed.wait()

    def turns(self) -> dict[str, TurnSeen]:
        seen: dict[str, TurnSeen] = {}
        for _, frame in self.frames:
            kind = frame.get("t")
            if kind not in ("turn.start", "delta", "turn.end"):
                continue
            turn = seen.setdefault(frame["turn"], TurnSeen())
            if kind == "turn.start":
                turn.start = frame
            elif kind == "delta":
                if frame["at"] != len(turn.text):
                    turn.gaps.append(f"delta at {frame['at']} after {len(turn.text)} chars")
                turn.text += frame["text"]
            else:
                turn.end = frame
        return seen

    def turn_problems(self, reasons: tuple[str, ...] = ("done",)) -> list[str]:
        """Every turn this member saw started, ended with one of `reasons`, whole."""
        problems = []
        for turn_id, turn in self.turns().items():
            where = f"{self.name} {turn_id}"
            if turn.start is None:
                problems.append(f"{where}: no turn.start")
            if turn.end is None:
                problems.append(f"{where}: no turn.end")
                continue
            if turn.end["reason"] not in reasons:
                problems.append(f"{where}: ended {turn.end['reason']}")
            if len(turn.text) != turn.end["chars"]:
                problems.append(f"{where}: {len(turn.text)} chars of {turn.end['chars']}")
            problems.extend(f"{where}: {gap}" for gap in turn.gaps)
        return problems

    def max_gap(self, start: float, end: float) -> float:
        """The longest wait between frames arriving within [start, end]."""
        times = [start] + [t for t, _ in self.frames if start <= t <= end] + [end]
        return max(b - a for a, b in itertools.pairwise(times))

    async def close(self, timeout: float = 10.0) -> None:
        """Close normally (1000), stop the reader and drop the frames (check them before)."""
        await asyncio.wait_for(self.client.ws.close(), timeout)
        await asyncio.wait_for(self.closed.wait(), timeout)
        await self._task
        self.frames.clear()  # a leak check must not count the test's own records


async def joined_member(
    url: str, token: str, name: str, room: str | None = None, **kwargs: Any
) -> Member:
    """A member that said hello (and joined `room`); `kwargs` go to `open_client`."""
    client = await open_client(url, **kwargs)
    await client.hello(token)
    if room is not None:
        await client.send({"t": "join", "id": "join", "room": room})
        ack = await client.recv_until(lambda f: f.get("id") == "join")
        assert ack[-1]["t"] == "ack", ack[-1]
    return Member(client, name)


def answers(request_id: object) -> Callable[[Frame], bool]:
    """Matches the ack or error answering `request_id`."""
    return lambda f: f.get("t") in ("ack", "error") and f.get("id") == request_id


def ends(turn: str) -> Callable[[Frame], bool]:
    """Matches the turn.end of `turn`."""
    return lambda f: f.get("t") == "turn.end" and f.get("turn") == turn


async def decline_approvals(member: Member, turn: str, since: int) -> None:
    """Answer every action of `turn` that waits for approval (no) so none stays open."""
    waiting = [
        f
        for _, f in member.frames[since:]
        if f.get("t") == "action" and f.get("turn") == turn and f.get("approval")
    ]
    for action in waiting:
        request_id = f"act-{action['action']}"
        act = {"t": "act", "id": request_id, "action": action["action"], "accept": False}
        await member.send(act)
        answer = await member.wait_for(answers(request_id), since)
        assert answer["t"] == "ack", f"{member.name}: {answer}"


async def drive(
    member: Member,
    npc: str,
    stop: asyncio.Event,
    *,
    max_turns: int,
    room: str | None = None,
    turn_timeout: float = 60.0,
) -> int:
    """Talk to `npc` turn after turn until `stop` (at most `max_turns`); turns completed."""
    done = 0
    for n in range(1, max_turns + 1):
        if stop.is_set():
            break
        say: Frame = {"t": "say", "id": n, "npc": npc, "text": SAYS.get(npc, "hello")}
        if room is not None:
            say["room"] = room
        since = await member.send(say)
        answer = await member.wait_for(answers(n), since)
        assert answer["t"] == "ack", f"{member.name}: {answer}"
        end = await member.wait_for(ends(answer["turn"]), since, timeout=turn_timeout)
        assert end["reason"] == "done", f"{member.name}: {end}"
        await decline_approvals(member, answer["turn"], since)
        done += 1
    return done


def ws_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One masked client frame (FIN set)."""
    head = bytes([0x80 | opcode])
    size = len(payload)
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", size)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", size)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class SilentSocket:
    """A WebSocket peer on a plain socket: handshake, hello, then silence."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    async def open(cls, url: str, token: str) -> SilentSocket:
        loop = asyncio.get_running_loop()
        host, port = address(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (host, port))
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            )
            await loop.sock_sendall(sock, request.encode())
            response = b""
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                while b"\r\n\r\n" not in response and len(response) < HANDSHAKE_LIMIT:
                    chunk = await loop.sock_recv(sock, 4096)
                    if not chunk:
                        break
                    response += chunk
            status = response.split(b"\r\n", 1)[0]
            assert b" 101 " in status, f"handshake refused: {status!r}"
            hello = msgpack.packb({"t": "hello", "token": token})
            await loop.sock_sendall(sock, ws_frame(hello))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    def close(self) -> None:
        self.sock.close()
