"""Server CPU per WebSocket frame: Hypercorn's `send` against fix 7's direct writes.

    .venv/bin/python -m benchmarks.write_path [--frames 100000] [--rounds 3]

One process serves a bare ASGI app on Hypercorn (uvloop, pinned to CPU 0,
the Hypercorn fixes installed); a raw client in a subprocess on CPU 1 reads
and discards. For each mode the app writes `--frames` 40-byte binary
messages as fast as it can and reports its own CPU time per frame
(`time.process_time`): `send` awaits Hypercorn's ASGI send per message (what
the socket edge did before), `direct-1` writes each message as one
`transport.write` through `hypercorn_fixes.direct_writes`, `direct-16` writes
16 per write (a writer that found 16 frames queued).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from npc_server.hypercorn_fixes import direct_writes, install_fixes

MESSAGE = b"x" * 40
MODES = {"send": 1, "direct-1": 1, "direct-16": 16}
Results = dict[str, list[tuple[float, float]]]

CLIENT = r"""
import base64, os, socket, sys
if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:
    os.sched_setaffinity(0, {1})
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
key = base64.b64encode(os.urandom(16))
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(4096)
def send(text):
    data = text.encode()
    s.sendall(bytes((0x82, 0x80 | len(data))) + b"\0\0\0\0" + data)
for command in sys.argv[2:]:
    send(command)
    tail = b""
    while not tail.endswith(b"DONE"):
        tail = (tail + s.recv(1 << 20))[-8:]
send("quit 0")
"""


def writer_app(results: Results) -> Any:
    """The ASGI app: each client message `MODE N` makes it write N frames, then `DONE`."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        while (event := await receive())["type"] == "websocket.receive":
            mode, count = event["bytes"].decode().split()
            if mode == "quit":
                break
            cpu, wall = await push(mode, int(count), send)
            results.setdefault(mode, []).append((cpu / int(count) * 1e6, int(count) / wall))
            await send({"type": "websocket.send", "bytes": b"DONE"})

    return app


async def push(mode: str, count: int, send: Any) -> tuple[float, float]:
    """Write `count` frames in `mode`; (CPU seconds, wall seconds)."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if mode == "send":
        message = {"type": "websocket.send", "bytes": MESSAGE}
        for _ in range(count):
            await send(message)
    else:
        direct = direct_writes(send)
        if direct is None:
            raise RuntimeError("direct writes are not available (see the log)")
        batch = [MESSAGE] * MODES[mode]
        for _ in range(count // len(batch)):
            if direct.write_nowait(batch):
                await direct.drain()
    return time.process_time() - cpu0, time.perf_counter() - wall0


async def measure(frames: int, rounds: int) -> Results:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    install_fixes()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    results: Results = {}
    stop = asyncio.Event()
    server = asyncio.create_task(serve(writer_app(results), config, shutdown_trigger=stop.wait))
    commands = [f"{mode} {frames}" for _ in range(rounds) for mode in MODES]
    port = str(sock.getsockname()[1])
    client = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, port, *commands)
    await asyncio.wait_for(client.wait(), 600)
    stop.set()
    await server
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.write_path")
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    try:
        import uvloop

        results = uvloop.run(measure(args.frames, args.rounds))
    except ImportError:
        results = asyncio.run(measure(args.frames, args.rounds))
    for mode, runs in results.items():
        cpu = ", ".join(f"{c:.2f}" for c, _ in runs)
        rate = ", ".join(f"{r:,.0f}" for _, r in runs)
        print(f"{mode:10} server CPU us/frame: {cpu}   frames/s: {rate}")


if __name__ == "__main__":
    main()
