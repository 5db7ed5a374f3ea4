"""Bare Quart on Hypercorn: an echo/push WebSocket at `/ws`, nothing else.

Usage: python -m benchmarks.baselines.quart_echo [--port 0] [--no-uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart, websocket

from benchmarks.baselines.listener import announce, listening_socket, parse_push, run


def create_app() -> Quart:
    app = Quart(__name__)

    @app.websocket("/ws")
    async def echo() -> None:
        while True:
            data = await websocket.receive()
            raw = data.encode() if isinstance(data, str) else data
            push = parse_push(raw)
            if push is None:
                await websocket.send(raw)
                continue
            count, size = push
            body = b"x" * size
            for _ in range(count):
                await websocket.send(body)
            await websocket.send(b"DONE")

    return app


async def main(host: str, port: int) -> None:
    sock = listening_socket(host, port)
    announce("quart-echo", sock)  # the socket already listens: connects wait in its backlog
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.backlog = 4096
    config.accesslog = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(create_app(), config, shutdown_trigger=stop.wait)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    run(main(args.host, args.port), not args.no_uvloop)
