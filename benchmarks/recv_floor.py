"""The floor of a relayed token: CPU to receive one paced chunk on one of many sockets.

    python -m benchmarks.recv_floor [--sockets 800] [--rate 20] [--seconds 6]

A relayed token reaches npc-server as one HTTP chunk on the model server's
socket: the event loop wakes for it (`epoll`), reads it (`recv`) and calls the
protocol's `data_received`, before any parsing. This measures that much alone,
on uvloop as the server runs: a sender process writes a chunk the size of an
OpenAI streaming chunk (an HTTP chunk holding one `data:` line, ~230 bytes) to
each of `--sockets` connections `--rate` times a second, staggered; this
process accepts them with a protocol whose `data_received` only counts, and
its CPU (`time.process_time`) over the window divided by the chunks received
is the floor. Compare it with the scripted path's CPU per delivered token
(section 4), which has no upstream socket: a relayed token costs at least the
scripted one plus this floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time

import uvloop

CHUNK_JSON = (
    b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench-model","choices":[{"index":0,"delta":{"content":" word"},'
    b'"logprobs":null,"finish_reason":null}]}'
)
EVENT = b"data: " + CHUNK_JSON + b"\n\n"
CHUNK = f"{len(EVENT):x}\r\n".encode() + EVENT + b"\r\n"


class Counting(asyncio.Protocol):
    chunks = 0
    received = 0

    def data_received(self, data: bytes) -> None:
        Counting.chunks += 1
        Counting.received += len(data)


class Sink(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


async def sender(port: int, sockets: int, rate: float, seconds: float, payload: bytes) -> None:
    """Child process: `sockets` connections, each written `payload` `rate` times a second."""
    loop = asyncio.get_running_loop()
    transports: list[asyncio.Transport] = []
    for _ in range(sockets):
        transport, _ = await loop.create_connection(Sink, "127.0.0.1", port)
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transports.append(transport)
    print("ready", flush=True)
    # Socket i is written in millisecond slot i % slots of each period (staggered).
    slots = max(1, round(1000 / rate))
    due: list[list[asyncio.Transport]] = [[] for _ in range(slots)]
    for i, transport in enumerate(transports):
        due[i % slots].append(transport)
    start = loop.time()
    done_ms = 0
    sent = 0
    while (elapsed_ms := int((loop.time() - start) * 1000)) < seconds * 1000:
        for ms in range(done_ms, elapsed_ms + 1):
            for transport in due[ms % slots]:
                transport.write(payload)
            sent += len(due[ms % slots])
        done_ms = elapsed_ms + 1
        await asyncio.sleep(0.001)
    print(json.dumps({"sent": sent}), flush=True)
    for transport in transports:
        transport.close()


async def receive(sockets: int, rate: float, seconds: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.Protocol:
        return Counting()

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    args = ["--child", str(port), "--sockets", str(sockets)]
    args += ["--rate", str(rate), "--seconds", str(seconds + 1.0)]  # 0.5 s each side
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.recv_floor", *args, stdout=subprocess.PIPE
    )
    assert child.stdout is not None
    line = await child.stdout.readline()
    assert line.strip() == b"ready", line
    await asyncio.sleep(0.5)  # the first writes arrive
    chunks0, cpu0, wall0 = Counting.chunks, time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    chunks1, cpu1, wall1 = Counting.chunks, time.process_time(), time.perf_counter()
    await child.wait()
    server.close()
    got = chunks1 - chunks0
    return {
        "chunks_per_s": got / (wall1 - wall0),
        "cpu_us_per_chunk": (cpu1 - cpu0) / got * 1e6 if got else float("nan"),
        "cpu_percent": (cpu1 - cpu0) / (wall1 - wall0) * 100,
    }


def measure(sockets: int, rate: float, seconds: float) -> dict[str, float]:
    """The floor in a process of its own (a fresh loop, as each server gets): its figures."""
    args = ["--sockets", str(sockets), "--rate", str(rate), "--seconds", str(seconds), "--json"]
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.recv_floor", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return {"sockets": sockets, "rate": rate, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=800)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        uvloop.run(sender(args.child, args.sockets, args.rate, args.seconds, CHUNK))
        return
    result = uvloop.run(receive(args.sockets, args.rate, args.seconds))
    if args.json:
        print(json.dumps({k: round(v, 2) for k, v in result.items()}))
        return
    print(
        f"receive: {args.sockets} sockets x {args.rate:g} chunks/s ({len(CHUNK)} bytes each): "
        f"{result['chunks_per_s']:,.0f} chunks/s, {result['cpu_us_per_chunk']:.2f} us of CPU "
        f"a chunk ({result['cpu_percent']:.1f}% of a core)"
    )


if __name__ == "__main__":
    main()
