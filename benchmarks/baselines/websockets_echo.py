"""Bare `websockets` library server: an echo/push WebSocket, nothing else.

Usage: python -m benchmarks.baselines.websockets_echo [--port 0] [--no-uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from websockets.asyncio.server import ServerConnection, serve

from benchmarks.baselines.listener import announce, listening_socket, parse_push, run


async def echo(ws: ServerConnection) -> None:
    async for data in ws:
        raw = data.encode() if isinstance(data, str) else data
        push = parse_push(raw)
        if push is None:
            await ws.send(raw)
            continue
        count, size = push
        body = b"x" * size
        for _ in range(count):
            await ws.send(body)
        await ws.send(b"DONE")


async def main(host: str, port: int) -> None:
    sock = listening_socket(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(echo, sock=sock, compression=None, ping_interval=None):
        announce("websockets-echo", sock)
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    run(main(args.host, args.port), not args.no_uvloop)
