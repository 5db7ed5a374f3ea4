"""The WebSocket writer's fast path over real sockets: order with pings and close, slow readers."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import replace
from typing import Any, cast

import msgpack
import pytest

from npc_server import hypercorn_fixes
from npc_server.events import Closed, NodeEvent
from npc_server.npcs import NpcConfig, load_npcs
from npc_server.protocol.codes import CloseCode
from npc_server.transports.websocket import WebSocketEdge
from tests.support.client import connect
from tests.support.server import DEMO_NPCS, RunningServer, running_server, server_config
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0
OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x2, 0x8, 0x9, 0xA
Frames = list[tuple[int, bytes]]


def bard(long_chars: int) -> dict[str, NpcConfig]:
    """The demo NPCs plus a bard whose replies are `long_chars` long."""
    npcs = load_npcs(DEMO_NPCS)
    settings = {**npcs["merchant"].backend_settings, "long_reply_chars": long_chars}
    return {**npcs, "bard": replace(npcs["merchant"], id="bard", backend_settings=settings)}


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked, final client frame (payloads under 64 KiB)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        head = bytes((0x80 | opcode, 0x80 | len(payload)))
    else:
        head = bytes((0x80 | opcode, 0x80 | 126)) + len(payload).to_bytes(2, "big")
    return head + mask + masked


def split_frames(buffer: bytearray) -> Frames:
    """Take every complete server frame off the front of `buffer`; unmasked, as RFC 6455 says."""
    frames: Frames = []
    while len(buffer) >= 2:
        assert buffer[1] & 0x80 == 0, "a server frame must not be masked"
        assert buffer[0] & 0x80, "a server message must not be fragmented"
        length, start = buffer[1] & 0x7F, 2
        if length >= 126:
            size = 2 if length == 126 else 8
            if len(buffer) < 2 + size:
                break
            length, start = int.from_bytes(buffer[2 : 2 + size], "big"), 2 + size
        if len(buffer) < start + length:
            break
        frames.append((buffer[0] & 0x0F, bytes(buffer[start : start + length])))
        del buffer[: start + length]
    return frames


class RawSocket:
    """A WebSocket client on a plain TCP socket: sees every frame, in the order it came."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()

    async def next_frames(self) -> Frames:
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
            assert data, "the server closed TCP before its close frame"
            self.buffer += data
            frames = split_frames(self.buffer)
            if frames:
                return frames

    def send(self, opcode: int, payload: bytes) -> None:
        self.writer.write(client_frame(opcode, payload))

    def send_msg(self, frame: dict[str, Any]) -> None:
        self.send(OP_BINARY, msgpack.packb(frame))


@asynccontextmanager
async def raw_websocket(server: RunningServer) -> AsyncIterator[RawSocket]:
    """A raw socket past the handshake on /ws, with no extension."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        async with raw_websocket_on(reader, writer) as ws:
            yield ws
    finally:
        writer.close()
        with suppress(ConnectionError, OSError):
            await writer.wait_closed()


def edges(server: RunningServer) -> list[WebSocketEdge]:
    return [s for s in server.node.sockets if isinstance(s, WebSocketEdge)]


async def test_pings_and_the_close_keep_their_place_among_fast_writes() -> None:
    """Pongs come whole among the deltas; errors and queued frames come before the close."""
    config = server_config(scripted={"tokens_per_second": 2000})
    async with running_server(config, npcs=bard(20_000)) as server:
        async with raw_websocket(server) as ws:
            ws.send_msg({"t": "hello", "token": server.token("alice")})
            [(_, welcome)] = await ws.next_frames()
            assert msgpack.unpackb(welcome)["t"] == "welcome"
            assert [edge.write_path for edge in edges(server)] == ["direct"]
            ws.send_msg({"t": "say", "id": 1, "npc": "bard", "text": "sing"})
            frames: Frames = []
            pings = [f"p{i}".encode() for i in range(20)]
            for ping in pings:  # each ping sent while deltas stream
                frames += await ws.next_frames()
                ws.send(OP_PING, ping)
            for _ in range(3):  # three bad frames in a row: 4501, after what is queued
                ws.send(OP_BINARY, b"\xc1")
            while not frames or frames[-1][0] != OP_CLOSE:
                frames += await ws.next_frames()
            ws.send(OP_CLOSE, frames[-1][1])
            rest = await asyncio.wait_for(ws.reader.read(), TIMEOUT)
    assert rest == b"" and not ws.buffer, "nothing may follow the close frame"
    assert [payload for op, payload in frames if op == OP_PONG] == pings
    close = frames[-1][1]
    assert int.from_bytes(close[:2], "big") == CloseCode.PROTOCOL_VIOLATION
    messages = [msgpack.unpackb(p) for op, p in frames if op == OP_BINARY]
    seqs = [m["seq"] for m in messages if "seq" in m]
    assert seqs == list(range(1, len(seqs) + 1)), "every frame once, in order"
    assert [m.get("code") for m in messages if m["t"] == "error"] == ["bad_frame"] * 3
    assert {op for op, _ in frames} <= {OP_BINARY, OP_PONG, OP_CLOSE}


class WriteLog:
    """The server's transport of one socket, with every `write()` recorded before it is made."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def test_a_turn_end_goes_out_in_the_write_of_the_turns_last_delta() -> None:
    """The last delta and its turn.end leave in one write: a turn costs no write of its own."""
    config = server_config(scripted={"tokens_per_second": 100})
    async with running_server(config) as server:
        async with raw_websocket(server) as ws:
            ws.send_msg({"t": "hello", "token": server.token("alice")})
            await ws.next_frames()
            [edge] = edges(server)
            flush = edge.ready.direct
            assert flush is not None, "the direct write path serves this socket"
            log = WriteLog(flush.direct._transport)
            cast(Any, flush.direct)._transport = log
            ws.send_msg({"t": "say", "id": 1, "npc": "merchant", "text": "rope?"})
            kinds: list[str] = []
            while "turn.end" not in kinds:
                kinds += [msgpack.unpackb(p)["t"] for op, p in await ws.next_frames()]
    writes = [
        [msgpack.unpackb(p)["t"] for op, p in split_frames(bytearray(data)) if op == OP_BINARY]
        for data in log.writes
    ]
    assert [k for w in writes for k in w] == kinds, "every frame after the welcome was logged"
    [ending] = [w for w in writes if "turn.end" in w]
    assert ending[-2:] == ["delta", "turn.end"]
    assert kinds.count("delta") > 2, "the reply streamed in several deltas"


async def test_a_reader_that_stops_is_closed_by_the_write_stall_watchdog() -> None:
    """With the queue bound out of reach, a full transport buffer past write_timeout closes 4000."""
    config = server_config(
        limits={"queue_bytes": 8 * 1024 * 1024, "queue_frames": 100_000, "write_timeout": 1.0},
        server={"send_buffer_bytes": 4096},
        scripted={"tokens_per_second": 0},
    )
    async with running_server(config, npcs=bard(1_000_000)) as server:
        events: list[NodeEvent] = []
        server.node.events.subscribe(events.append)
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect((server.host, server.port))
        reader, writer = await asyncio.open_connection(sock=stalled)
        try:
            async with raw_websocket_on(reader, writer) as ws:
                ws.send_msg({"t": "hello", "token": server.token("slow")})
                await ws.next_frames()
                assert [edge.write_path for edge in edges(server)] == ["direct"]
                ws.send_msg({"t": "say", "id": 1, "npc": "bard", "text": "sing"})
                transport = writer.transport
                assert isinstance(transport, asyncio.Transport)
                transport.pause_reading()  # and never read again
                await wait_until(lambda: bool(closes(events)), timeout=20, what="a slow close")
        finally:
            writer.close()
            with suppress(ConnectionError, OSError):
                await writer.wait_closed()
    [closed] = closes(events)
    assert (closed.code, closed.player) == (CloseCode.SLOW_CONSUMER, "slow")
    assert closed.reason == "a write took over 1 s"


@asynccontextmanager
async def raw_websocket_on(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> AsyncIterator[RawSocket]:
    """The handshake on an already connected socket."""
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101"), head
    yield RawSocket(reader, writer)


def closes(events: list[NodeEvent]) -> list[Closed]:
    return [e for e in events if isinstance(e, Closed) and e.code == CloseCode.SLOW_CONSUMER]


async def test_permessage_deflate_falls_back_to_hypercorns_send(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compressed socket is served through Hypercorn (reason logged) and still streams."""
    config = server_config(server={"websocket_compression": True})
    caplog.set_level(logging.INFO, logger="npc_server.hypercorn_fixes")
    # Each reason is logged once per process: forget those another test caused first.
    monkeypatch.setattr(hypercorn_fixes, "_reported", set())
    async with running_server(config) as server:
        async with connect(server.url, compression="deflate") as client:
            await client.hello(server.token("alice"))
            assert client.ws.protocol.extensions, "the client negotiated permessage-deflate"
            await client.send({"t": "say", "id": 1, "npc": "merchant", "text": "wares?"})
            end = await client.expect("turn.end")
            assert end["reason"] == "done" and end["chars"] > 0
            assert [edge.write_path for edge in edges(server)] == ["hypercorn"]
    assert "permessage-deflate" in caplog.text
