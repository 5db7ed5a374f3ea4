"""A redis-server for the cluster figures, and what it says about itself (INFO).

The benchmark starts Debian's `redis-server` on a free loopback port with no
persistence (`--save ""`, no AOF), like the tests do, and reads `INFO` over a
plain socket: commands per type (commandstats), bytes in and out of the
network, memory and its own CPU time (`used_cpu_sys` + `used_cpu_user`).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.servers import Proc, spawn

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT = 10.0
Info = dict[str, str]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_redis(run_dir: Path, name: str, cpu: int | None) -> Proc:
    """redis-server on a free loopback port, pinned to `cpu`; returns once it answers PING."""
    if not shutil.which("redis-server") and not Path(REDIS_SERVER).exists():
        raise RuntimeError("redis-server is not installed (Debian's redis-server package)")
    port = free_port()
    argv = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", tempfile.gettempdir(), "--loglevel", "warning"]
    proc = spawn(name, argv, run_dir, wait_listening=False, cpu=cpu)
    proc.host, proc.port = "127.0.0.1", port
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers(port):
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(f"redis-server did not start on port {port}")
        time.sleep(0.02)  # polling a process we started
    return proc


def redis_url(proc: Proc) -> str:
    return f"redis://127.0.0.1:{proc.port}/0"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def parse_info(text: str) -> Info:
    """`INFO`'s `key:value` lines as a dict (sections and comments skipped)."""
    out: Info = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


INFO_REQUEST = b"INFO everything\r\n"
REPLY_BYTES = "_reply_bytes"  # what this INFO reply itself added to Redis's output bytes


def _parse_reply(head: bytes, body: bytes) -> Info:
    if not head.startswith(b"$"):
        raise RuntimeError(f"unexpected INFO reply {head[:40]!r}")
    doc = parse_info(body.decode("utf-8", "replace"))
    doc[REPLY_BYTES] = str(len(head) + len(body))
    return doc


def info_nowait(port: int, timeout: float = 2.0) -> Info:
    """`INFO everything` from the redis-server on `port` (blocking; a few ms)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(INFO_REQUEST)
        reader = conn.makefile("rb")
        head = reader.readline()
        size = int(head[1:].strip()) if head.startswith(b"$") else 0
        body = reader.read(size + 2)
    return _parse_reply(head, body)


async def info(port: int, timeout: float = 2.0) -> Info:
    """`INFO everything`, without blocking the loop."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(INFO_REQUEST)
            head = await reader.readline()
            size = int(head[1:].strip()) if head.startswith(b"$") else 0
            body = await reader.readexactly(size + 2)
        finally:
            writer.close()
    return _parse_reply(head, body)


def commands(doc: Mapping[str, str]) -> dict[str, int]:
    """Calls per command (`cmdstat_publish:calls=3,...` -> {"publish": 3}), INFO excluded."""
    out: dict[str, int] = {}
    for key, value in doc.items():
        if key.startswith("cmdstat_") and key != "cmdstat_info":
            fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
            out[key.removeprefix("cmdstat_")] = int(fields.get("calls", "0"))
    return out


def cpu_seconds(doc: Mapping[str, str]) -> float:
    """Redis's own CPU time, main thread and children (`used_cpu_sys` + `used_cpu_user`)."""
    return float(doc.get("used_cpu_sys", 0)) + float(doc.get("used_cpu_user", 0))


def delta(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, Any]:
    """What Redis did between two INFO readings (the INFO calls themselves excluded)."""
    calls0, calls1 = commands(before), commands(after)
    per_command = {k: v - calls0.get(k, 0) for k, v in calls1.items() if v - calls0.get(k, 0)}

    def diff(key: str) -> float:
        return float(after.get(key, 0)) - float(before.get(key, 0))

    # The first reading's reply and the second's request fall inside the interval.
    return {
        "commands": sum(per_command.values()),
        "publish": per_command.get("publish", 0),
        "per_command": per_command,
        "net_input_bytes": diff("total_net_input_bytes") - len(INFO_REQUEST),
        "net_output_bytes": diff("total_net_output_bytes") - float(before.get(REPLY_BYTES, 0)),
        "used_memory_bytes": diff("used_memory"),
        "cpu_s": round(cpu_seconds(after) - cpu_seconds(before), 4),
    }
