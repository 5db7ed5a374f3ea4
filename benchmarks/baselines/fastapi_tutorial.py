"""The FastAPI tutorial loop as a baseline: the relay a project starts from.

Usage: NPC_BENCH_MODEL_URL=http://host:port python -m benchmarks.baselines.fastapi_tutorial

FastAPI on uvicorn (uvloop, its default WebSocket implementation), one
handler per socket: accept, receive, and for each `say` call the `openai`
SDK with `stream=True` and send one message per chunk. It speaks just
enough of npc-server's protocol (msgpack `welcome`, `ack`, `turn.start`,
`delta`, `turn.end`, `pong`) for the benchmark's players, and nothing more:
no auth, queue, merging or interrupts. One deviation from the tutorial: the
SDK's HTTP pool may open 10,000 connections (its default is 1,000, with 100
kept alive), so that the pool is not what this baseline measures.
"""

from __future__ import annotations

import argparse
import itertools
import os
from typing import Any

import httpx2
import msgpack
import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from openai import AsyncOpenAI, DefaultAsyncHttpxClient

from benchmarks.baselines.listener import announce, listening_socket, run

app = FastAPI()
client = AsyncOpenAI(
    base_url=os.environ.get("NPC_BENCH_MODEL_URL", "http://127.0.0.1:8000") + "/v1",
    api_key="bench",
    max_retries=0,
    http_client=DefaultAsyncHttpxClient(
        limits=httpx2.Limits(max_connections=10_000, max_keepalive_connections=10_000)
    ),
)
turn_ids = itertools.count(1)


def pack(frame: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(frame)
    return data


@app.websocket("/ws")
async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    seq = itertools.count(1)
    try:
        await websocket.receive_bytes()  # hello: the tutorial checks no token
        welcome = {"t": "welcome", "session": "s", "player": "p", "resumed": False, "seq": 0}
        await websocket.send_bytes(pack({**welcome, "heartbeat": 15.0, "limits": {}}))
        while True:
            frame = msgpack.unpackb(await websocket.receive_bytes())
            if frame.get("t") == "ping":
                await websocket.send_bytes(pack({"t": "pong", "ts": frame.get("ts")}))
            elif frame.get("t") == "say":
                await reply(websocket, frame, seq)
    except WebSocketDisconnect:
        pass


async def reply(websocket: WebSocket, say: dict[str, Any], seq: itertools.count[int]) -> None:
    turn = f"t{next(turn_ids)}"
    await websocket.send_bytes(
        pack({"t": "ack", "id": say.get("id"), "turn": turn, "seq": next(seq)})
    )
    start = {"t": "turn.start", "turn": turn, "npc": say.get("npc"), "player": "p"}
    await websocket.send_bytes(pack({**start, "seq": next(seq)}))
    stream = await client.chat.completions.create(
        model="bench",
        messages=[{"role": "user", "content": str(say.get("text"))}],
        stream=True,
    )
    at = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text = chunk.choices[0].delta.content
            delta = {"t": "delta", "turn": turn, "text": text, "at": at, "seq": next(seq)}
            await websocket.send_bytes(pack(delta))
            at += len(text)
    end = {"t": "turn.end", "turn": turn, "reason": "done", "chars": at, "kept": at}
    await websocket.send_bytes(pack({**end, "seq": next(seq)}))


async def main(host: str, port: int) -> None:
    sock = listening_socket(host, port)
    announce("fastapi-tutorial", sock)
    config = uvicorn.Config(
        app, fd=sock.fileno(), log_level="warning", backlog=4096, ws_per_message_deflate=False
    )
    await uvicorn.Server(config).serve()  # it handles SIGTERM itself


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    run(main(args.host, args.port), use_uvloop=True)
