"""The fast path's framer: its frames as the `websockets` library parses them, and on a socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from npc_server.hypercorn_fixes import DirectWrites, direct_writes, install_fixes
from npc_server.transports.framing import binary_frames, binary_header

# Both sides of each length boundary of RFC 6455 5.2 (7-, 16- and 64-bit lengths).
LENGTHS = [0, 1, 125, 126, 127, 65535, 65536, 70_000]
TIMEOUT = 10.0


def message(length: int) -> bytes:
    """`length` bytes that differ from one offset to the next."""
    return bytes(i % 251 for i in range(length))


def parse_all(data: bytes) -> list[Frame]:
    """Every frame in `data`, parsed by `websockets` as a client parses a server's frames."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames: list[Frame] = []
    while reader.buffer:
        parser: Generator[None, None, Frame] = Frame.parse(
            reader.read_exact, mask=False, max_size=None
        )
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:
            raise AssertionError("a frame was cut short")
    return frames


@pytest.mark.parametrize("length", LENGTHS)
def test_one_frame_parses_as_a_final_unmasked_binary_message(length: int) -> None:
    """Each length, at each boundary, is one FIN binary frame carrying exactly the bytes."""
    data = message(length)
    [frame] = parse_all(binary_header(length) + data)
    assert frame.opcode is Opcode.BINARY and frame.fin and frame.data == data


def test_header_sizes_switch_at_126_and_65536() -> None:
    """The length takes 7 bits up to 125, 16 bits up to 65535, 64 bits above."""
    sizes = {n: len(binary_header(n)) for n in LENGTHS}
    assert sizes == {0: 2, 1: 2, 125: 2, 126: 4, 127: 4, 65535: 4, 65536: 10, 70_000: 10}


def test_a_batch_is_its_messages_in_order() -> None:
    """Several messages in one buffer parse back as the same messages, in the same order."""
    messages = [message(n) for n in LENGTHS]
    frames = parse_all(binary_frames(messages))
    assert [f.data for f in frames] == messages
    assert all(f.opcode is Opcode.BINARY and f.fin for f in frames)


@asynccontextmanager
async def hypercorn_app(app: Any) -> AsyncIterator[int]:
    """A bare ASGI app on a real Hypercorn, loopback; yields the port."""
    install_fixes()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    config = HypercornConfig()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.graceful_timeout = 0.5
    stop = asyncio.Event()
    task = asyncio.create_task(hypercorn_serve(app, config, shutdown_trigger=stop.wait))
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT)
        sock.detach()


def writer_app(found: list[DirectWrites | None], batches: list[list[bytes]]) -> Any:
    """An app that accepts, writes `batches` through fix 7, then closes normally."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        direct = direct_writes(send)
        found.append(direct)
        if direct is not None:
            for batch in batches:
                if direct.write_nowait(batch):
                    await direct.drain()
        await send({"type": "websocket.close", "code": 1000, "reason": "done"})

    return app


async def test_boundary_lengths_reach_a_websockets_client_over_a_real_socket() -> None:
    """Frames written straight to Hypercorn's transport decode in a real client, then close."""
    single = [[message(n)] for n in LENGTHS]
    batched = [[message(n) for n in LENGTHS]]
    found: list[DirectWrites | None] = []
    async with hypercorn_app(writer_app(found, single + batched)) as port:
        url = f"ws://127.0.0.1:{port}/"
        async with websockets.connect(url, compression=None, max_size=None) as ws:
            received = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(2 * len(LENGTHS))]
            with pytest.raises(websockets.ConnectionClosedOK):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert (ws.close_code, ws.close_reason) == (1000, "done")
    assert found and found[0] is not None
    assert received == [message(n) for n in LENGTHS] * 2
