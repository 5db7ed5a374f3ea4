"""The listening socket and event loop shared by the bare servers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any

BACKLOG = 4096


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket (the kernel picks the port when `port` is 0)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    return sock


def announce(name: str, sock: socket.socket) -> None:
    host, port = sock.getsockname()[:2]
    print(f"{name} listening on http://{host}:{port}", flush=True)


def parse_push(data: bytes) -> tuple[int, int] | None:
    """`PUSH <count> <size>` as (count, size), or None for anything else."""
    if not data.startswith(b"PUSH "):
        return None
    _, count, size = data.split()
    return int(count), int(size)


def run(main: Coroutine[Any, Any, None], use_uvloop: bool) -> None:
    """Run on uvloop when asked and available, as npc-server does."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)
