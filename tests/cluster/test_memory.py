"""NPC memory in Redis with real parts: a redis-server and two npc-server processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from npc_server.memories import codec
from npc_server.memories.base import Lines
from npc_server.memories.redis import memory_key
from tests.support.client import Frame, RawClient, connect
from tests.support.redis import RedisServer, redis_server
from tests.support.server import DEMO_NPCS, ServerProcess, start_server_process

pytestmark = pytest.mark.e2e

TTL = 86_400  # one day, so the test can tell it from the 30-day default
GREETING = "Back again, alice? "
PRICES = "What do things cost?"  # the merchant's prices: no action holds the conversation
WAIT = 15.0


def memory_config(tmp_path: Path, redis: RedisServer, scripted: str = "") -> Path:
    """Every node's file: the demo NPCs, fast scripted pacing, one Redis, memory for a day."""
    path = tmp_path / "server.toml"
    path.write_text(
        f'[server]\nnpcs_dir = "{DEMO_NPCS}"\n'
        f"[overrides.scripted]\nfirst_token_ms = 0\ntokens_per_second = 400\n{scripted}"
        f'[cluster]\nredis_url = "{redis.url}"\nmemory_ttl = {TTL}\n',
        encoding="utf-8",
    )
    return path


@contextmanager
def nodes(
    tmp_path: Path, count: int, scripted: str = ""
) -> Iterator[tuple[RedisServer, list[ServerProcess]]]:
    """`count` npc-server processes on their own ports, sharing one redis-server."""
    with redis_server() as redis, ExitStack() as stack:
        config = memory_config(tmp_path, redis, scripted)
        started = []
        for _ in range(count):
            node = start_server_process(env={"NPC_SERVER_CONFIG": str(config)})
            stack.callback(node.kill)
            started.append(node)
        yield redis, started


@asynccontextmanager
async def redis_client(redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis.url)
    try:
        yield client
    finally:
        await client.aclose()


async def talk(client: RawClient, npc: str, text: str, say_id: int = 1) -> str:
    """Say `text`; the whole reply."""
    await client.send({"t": "say", "id": say_id, "npc": npc, "text": text})
    ack = await client.expect("ack")
    frames: list[Frame] = await client.recv_until(
        lambda f: f["t"] == "turn.end" and f["turn"] == ack["turn"]
    )
    assert frames[-1]["reason"] == "done"
    return "".join(f["text"] for f in frames if f["t"] == "delta" and f["turn"] == ack["turn"])


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll an async condition (what Redis holds) with a deadline."""
    for _ in range(int(WAIT / 0.01)):  # polling Redis's state with a deadline
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out after {WAIT} s waiting for {what}")


async def stored(raw: aioredis.Redis, npc: str, player: str) -> Lines:
    value = await raw.get(memory_key(npc, f"player:{player}"))
    return () if value is None else codec.decode(value)


async def remembered(raw: aioredis.Redis, npc: str, player: str, lines: int) -> None:
    """Until Redis holds at least `lines` lines of `npc`'s memory of `player`."""

    async def enough() -> bool:
        return len(await stored(raw, npc, player)) >= lines

    await until(enough, f"{lines} lines of {npc}'s memory of {player}")


async def test_memory_survives_a_killed_node_and_is_seen_on_another(tmp_path: Path) -> None:
    """alice talks on A; A is SIGKILLed; on B the merchant greets her and recalls the talk."""
    with nodes(tmp_path, 2) as (redis, (a, b)):
        async with redis_client(redis) as raw:
            async with connect(a.url) as alice:
                await alice.hello(a.token("alice"))
                first = await talk(alice, "merchant", PRICES)
                assert not first.startswith("Back again")
                await remembered(raw, "merchant", "alice", 2)
            a.kill()
            async with connect(b.url) as alice:
                await alice.hello(b.token("alice"))
                again = await talk(alice, "merchant", PRICES)
                assert again.startswith(GREETING)
                later = await talk(alice, "merchant", PRICES, say_id=2)
                assert not later.startswith("Back again")
            async with connect(b.url) as bob:
                await bob.hello(b.token("bob"))
                assert not (await talk(bob, "merchant", PRICES)).startswith("Back again")
            await remembered(raw, "merchant", "alice", 6)
            texts = [line.text for line in await stored(raw, "merchant", "alice")]
            assert texts[:2] == [PRICES, first] and texts[3] == again


async def test_the_memory_key_lives_memory_ttl_after_the_last_turn(tmp_path: Path) -> None:
    """The key is `npc:mem:<npc>:player:<id>` with a TTL of `[cluster] memory_ttl`."""
    with nodes(tmp_path, 1) as (redis, [node]):
        async with redis_client(redis) as raw:
            async with connect(node.url) as alice:
                await alice.hello(node.token("alice"))
                await talk(alice, "guard", "hello")
            await remembered(raw, "guard", "alice", 2)
            ttl = await raw.pttl("npc:mem:guard:player:alice")
            assert TTL * 1000 - 60_000 < ttl <= TTL * 1000


async def test_memory_in_redis_never_exceeds_memory_chars(tmp_path: Path) -> None:
    """Long replies: Redis holds at most the NPC's memory_chars (the guard's 4000) of text."""
    with nodes(tmp_path, 1, scripted="long_reply_chars = 1800\n") as (redis, [node]):
        async with redis_client(redis) as raw:
            async with connect(node.url) as alice:
                await alice.hello(node.token("alice"))
                replies = [await talk(alice, "guard", "hello", say_id=i) for i in range(1, 5)]
            await until(_holds_last(raw, replies[-1]), "the last reply in Redis")
            lines = await stored(raw, "guard", "alice")
            assert sum(len(line.text) for line in lines) <= 4000
            assert lines[-1].text == replies[-1] and len(lines) < 8


def _holds_last(raw: aioredis.Redis, reply: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        lines = await stored(raw, "guard", "alice")
        return bool(lines) and lines[-1].text == reply

    return check


async def test_a_corrupted_memory_is_a_stranger_a_warning_and_no_crash(tmp_path: Path) -> None:
    """Garbage under alice's key: the node serves her as a stranger, warns, and replaces it."""
    with nodes(tmp_path, 1) as (redis, [node]):
        async with redis_client(redis) as raw:
            key = memory_key("merchant", "player:alice")
            await raw.set(key, b"\x93\x07not ours")
            async with connect(node.url) as alice:
                await alice.hello(node.token("alice"))
                reply = await talk(alice, "merchant", PRICES)
                assert reply and not reply.startswith("Back again")
            await remembered(raw, "merchant", "alice", 2)
            first, *_ = await stored(raw, "merchant", "alice")
            assert first.text == PRICES
        warnings = [line for line in node.output if key in line and "read as empty" in line]
        assert len(warnings) == 1, node.output[-20:]
        assert not [line for line in node.output if "Traceback" in line]
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{node.http_url}/healthz")).json()["status"] == "ok"
        assert node.terminate() == 0


async def test_redis_away_means_no_memory_not_a_hung_turn(tmp_path: Path) -> None:
    """Redis stopped: the turn runs without memory and the node warns; once Redis is back
    the conversation loads and saves, the lines said meanwhile included."""
    with nodes(tmp_path, 1) as (redis, [node]):
        async with connect(node.url) as alice:
            await alice.hello(node.token("alice"))
            redis.stop()
            async with asyncio.timeout(WAIT):
                assert await talk(alice, "guard", "open the gate")
            assert [line for line in node.output if "memory load failed" in line]
            redis.start()
            async with redis_client(redis) as raw:
                for say_id in range(2, 200):  # each turn retries the load; at most one a second
                    await talk(alice, "guard", "hello", say_id=say_id)
                    if await stored(raw, "guard", "alice"):
                        break
                    await asyncio.sleep(0.05)  # polling with a deadline: the store's back-off
                texts = [line.text for line in await stored(raw, "guard", "alice")]
        assert texts[0] == "open the gate" and texts[2] == "hello"
        assert node.terminate() == 0
