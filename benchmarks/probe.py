"""What the load process reads about the server: RSS, CPU time, kernel TCP memory, /healthz."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import psutil

PAGE = os.sysconf("SC_PAGE_SIZE")


class ServerProbe:
    """Reads one server process by pid (from /proc, via psutil)."""

    def __init__(self, pid: int, host: str, port: int) -> None:
        self.process = psutil.Process(pid)
        self.host = host
        self.port = port

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    async def healthz(self, timeout: float = 5.0) -> dict[str, Any]:
        """GET /healthz over a fresh connection; its JSON body."""
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                request = f"GET /healthz HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n\r\n"
                writer.write(request.encode())
                raw = await reader.read()
            finally:
                writer.close()
        _, _, body = raw.partition(b"\r\n\r\n")
        result: dict[str, Any] = json.loads(body)
        return result


def kernel_tcp_bytes() -> int:
    """Memory the kernel holds in TCP socket buffers, machine-wide (/proc/net/sockstat)."""
    with open("/proc/net/sockstat", encoding="ascii") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1]) * PAGE
    return 0


def own_cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy, all cores (psutil.cpu_times)."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return float(sum(t) - idle)


class CpuWindow:
    """Server, own (load process) and everyone else's CPU use over a time window.

    "Other" is what the rest of the machine burned meanwhile (other sessions'
    processes, the kernel's own threads): figures taken while it is high are
    suspect, so every window reports it.
    """

    def __init__(self, probe: ServerProbe) -> None:
        self.probe = probe
        self.start = time.perf_counter()
        self.server0 = probe.cpu_seconds()
        self.own0 = own_cpu_seconds()
        self.busy0 = busy_cpu_seconds()

    def close(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.start
        server = self.probe.cpu_seconds() - self.server0
        own = own_cpu_seconds() - self.own0
        other = max(0.0, busy_cpu_seconds() - self.busy0 - server - own)
        return {
            "elapsed_s": round(elapsed, 3),
            "server_cpu_s": round(server, 3),
            "server_cpu_pct": round(100 * server / elapsed, 1),
            "client_cpu_pct": round(100 * own / elapsed, 1),
            "other_cpu_pct": round(100 * other / elapsed, 1),
        }


def other_cpu_pct(seconds: float = 1.0) -> float:
    """CPU the rest of the machine uses (not this process), as % of one core, over `seconds`."""
    busy0, own0 = busy_cpu_seconds(), own_cpu_seconds()
    time.sleep(seconds)
    other = busy_cpu_seconds() - busy0 - (own_cpu_seconds() - own0)
    return round(100 * max(0.0, other) / seconds, 1)
