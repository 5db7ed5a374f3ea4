"""CPU per streamed chunk of the `openai` backend: the SDK's `stream=True` vs the raw reader.

    python -m benchmarks.relay_reader [--chunks 2000] [--rounds 5] [--uvloop]

The stub OpenAI server (tests/backends/openai_stub.py) runs in a child process
on loopback, so only the client's CPU is counted (`time.process_time` of this
process). Each round streams one reply of `--chunks` content deltas through:

- `sdk`: the previous reader, `chat.completions.create(stream=True)` iterated
  with an `asyncio.timeout` around each chunk (a pydantic object per chunk);
- `raw`: `OpenAIBackend.generate` (SSE decoder, orjson, one deadline timer).

Both are measured in the same run, interleaved; the median round is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import openai

from npc_server.backends.base import GenerationRequest, TextPiece
from npc_server.backends.openai import OpenAIBackend
from npc_server.npcs import NpcConfig

NPC = NpcConfig(id="bench", name="Bench", backend="openai")
REQUEST = GenerationRequest(npc=NPC, player="p1", text="talk")


async def serve(chunks: int) -> None:
    """Child process: a stub whose every reply has `chunks` deltas; prints its base_url."""
    from tests.backends.openai_stub import OpenAIStub, reply

    text = [f"tok{i} " for i in range(chunks)]
    async with OpenAIStub(default=reply(*text)) as stub:
        print(stub.base_url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def sdk_round(client: openai.AsyncOpenAI) -> int:
    """One reply through the SDK's stream objects, as the backend read it before."""
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "talk"}], stream=True
    )
    count = 0
    try:
        while True:
            try:
                async with asyncio.timeout(15.0):
                    chunk = await stream.__anext__()
            except StopAsyncIteration:
                break
            if chunk.choices and chunk.choices[0].delta.content:
                count += 1
    finally:
        await stream.close()
    return count


async def raw_round(backend: OpenAIBackend) -> int:
    """One reply through the backend as it is now."""
    count = 0
    async for piece in backend.generate(REQUEST):
        if isinstance(piece, TextPiece):
            count += 1
    return count


async def cpu_us_per_chunk(run: Callable[[], Awaitable[int]]) -> float:
    started = time.process_time()
    count = await run()
    return (time.process_time() - started) / count * 1e6


async def measure(base_url: str, rounds: int) -> dict[str, list[float]]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    backend = OpenAIBackend(NPC, {"base_url": base_url, "model": "m", "include_usage": False})
    results: dict[str, list[float]] = {"sdk": [], "raw": []}
    try:
        await sdk_round(client)  # warm both connection pools and imports
        await raw_round(backend)
        for _ in range(rounds):
            results["sdk"].append(await cpu_us_per_chunk(lambda: sdk_round(client)))
            results["raw"].append(await cpu_us_per_chunk(lambda: raw_round(backend)))
    finally:
        await client.close()
        await backend.aclose()
    return results


def main(argv: list[str] | None = None) -> int:
    """Start the stub, measure both readers, print µs of CPU per chunk."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--uvloop", action="store_true", help="run the client on uvloop")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve(args.chunks))
        return 0
    command = [sys.executable, "-m", "benchmarks.relay_reader", "--serve"]
    command += ["--chunks", str(args.chunks)]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        base_url = child.stdout.readline().strip()
        runner = asyncio.run
        if args.uvloop:
            import uvloop

            runner = uvloop.run
        results = runner(measure(base_url, args.rounds))
    finally:
        with contextlib.suppress(BrokenPipeError):
            assert child.stdin is not None
            child.stdin.close()
        child.wait(10)
    sdk, raw = (statistics.median(results[k]) for k in ("sdk", "raw"))
    loop_name = "uvloop" if args.uvloop else "asyncio"
    print(f"{args.chunks} chunks x {args.rounds} rounds on {loop_name}, client CPU per chunk:")
    print(f"  sdk stream=True : {sdk:7.1f} us")
    print(f"  raw reader      : {raw:7.1f} us   ({sdk / raw:.1f}x less)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
