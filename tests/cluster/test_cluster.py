"""Cluster mode with real parts: a redis-server and several npc-server processes on loopback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from npc_server.brokers import wire
from npc_server.protocol.frames import Said
from tests.support.client import Frame, RawClient, connect
from tests.support.healthz import undocumented, undocumented_cluster_counts
from tests.support.redis import RedisServer, free_port, redis_server
from tests.support.server import DEMO_NPCS, REPO, SECRET, ServerProcess, start_server_process
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


def cluster_config(
    tmp_path: Path,
    redis: RedisServer,
    *,
    tokens_per_second: int = 200,
    npcs_dir: Path = DEMO_NPCS,
    limits: str = "",
    server: str = "",
    scripted: str = "",
) -> Path:
    """A server file for every node: the demo NPCs, scripted pacing without jitter
    (200 tokens/s: fast), extra `[limits]`, `[server]` and scripted lines, one Redis."""
    path = tmp_path / "server.toml"
    path.write_text(
        f'[server]\nnpcs_dir = "{npcs_dir}"\n{server}'
        f"[overrides.scripted]\nfirst_token_ms = 0\ntokens_per_second = {tokens_per_second}\n"
        f"jitter = 0.0\n{scripted}"
        f"[limits]\n{limits}"
        f'[cluster]\nredis_url = "{redis.url}"\n',
        encoding="utf-8",
    )
    return path


@contextmanager
def nodes_on_redis(
    tmp_path: Path, count: int, **config: Any
) -> Iterator[tuple[RedisServer, list[ServerProcess]]]:
    """A redis-server and `count` npc-server processes on their own ports sharing it
    (`config`: `cluster_config`'s options)."""
    with redis_server() as redis, ExitStack() as stack:
        config_path = cluster_config(tmp_path, redis, **config)
        started = []
        for _ in range(count):
            node = start_server_process(env={"NPC_SERVER_CONFIG": str(config_path)})
            stack.callback(node.kill)
            started.append(node)
        yield redis, started


@contextmanager
def nodes(tmp_path: Path, count: int, **config: Any) -> Iterator[list[ServerProcess]]:
    """`count` npc-server processes sharing one redis-server."""
    with nodes_on_redis(tmp_path, count, **config) as (_, started):
        yield started


async def workers_serving(server: ServerProcess, count: int) -> None:
    """Until each of `count` workers of `npc-server --workers` printed its listening line."""
    await wait_until(
        lambda: sum(line.count("npc-server node ") for line in server.output) == count,
        timeout=60,
        what=f"{count} workers serving",
    )


async def join(client: RawClient, room: str, req: int = 1) -> None:
    await client.send({"t": "join", "id": req, "room": room})
    await client.recv_until(lambda f: f["t"] == "ack" and f.get("id") == req)


def turn_text(frames: list[Frame], turn: str) -> str:
    return "".join(f["text"] for f in frames if f["t"] == "delta" and f["turn"] == turn)


async def test_a_room_spans_nodes(tmp_path: Path) -> None:
    """Members on two nodes see each other's presence, said, typing and the NPC's whole turn."""
    with nodes(tmp_path, 2) as (a, b):
        async with connect(a.url) as alice, connect(b.url) as bob:
            welcome_a = await alice.hello(a.token("alice"))
            welcome_b = await bob.hello(b.token("bob"))
            assert welcome_a["server"]["node"] != welcome_b["server"]["node"]
            await join(alice, "inn")
            await join(bob, "inn")
            presence = await alice.expect("presence")
            assert (presence["player"], presence["state"]) == ("bob", "joined")
            await bob.send({"t": "typing", "on": True, "room": "inn"})
            assert (await alice.expect("typing"))["player"] == "bob"
            await bob.send(
                {"t": "say", "id": 2, "npc": "questgiver", "text": "any quests?", "room": "inn"}
            )
            bob_frames = await bob.recv_until(lambda f: f["t"] == "turn.end")
            alice_frames = await alice.recv_until(lambda f: f["t"] == "turn.end")
            said = next(f for f in alice_frames if f["t"] == "said")
            assert (said["player"], said["text"]) == ("bob", "any quests?")
            [start] = [f for f in alice_frames if f["t"] == "turn.start"]
            assert start["player"] == "bob" and start["room"] == "inn"
            text = turn_text(alice_frames, start["turn"])
            assert text and text == turn_text(bob_frames, start["turn"])
            assert alice_frames[-1]["chars"] == len(text) == bob_frames[-1]["chars"]


async def test_a_private_stream_stays_off_redis_until_another_node_listens(
    tmp_path: Path,
) -> None:
    """Alice's turns on one node are not written to Redis while no other node holds a
    session of hers (/healthz counts them kept local); once she also connects to a second
    node, that socket gets her next turn whole."""
    with nodes(tmp_path, 2) as (a, b):
        async with connect(a.url) as here:
            await here.hello(a.token("alice"))
            await here.send({"t": "say", "id": 1, "npc": "guard", "text": "open the gate"})
            await here.recv_until(lambda f: f["t"] == "turn.end")
            async with httpx.AsyncClient() as http:
                broker = (await http.get(f"{a.http_url}/healthz")).json()["cluster"]["broker"]
            assert broker["kept_local"] >= 5 and broker["alone"] >= 1
            assert 1 <= broker["batches"] <= broker["sent"]  # first publications, then none
            async with connect(b.url) as there:
                await there.hello(b.token("alice"))
                await here.send({"t": "say", "id": 2, "npc": "guard", "text": "who are you?"})
                mine = await here.recv_until(lambda f: f["t"] == "turn.end")
                theirs = await there.recv_until(lambda f: f["t"] == "turn.end")
            [start] = [f for f in theirs if f["t"] == "turn.start"]
            text = turn_text(theirs, start["turn"])
            assert text and text == turn_text(mine, start["turn"])


async def test_a_welcome_comes_once_other_nodes_can_reach_the_session(tmp_path: Path) -> None:
    """By the time a node welcomes a socket, Redis delivers the player's channel to it: a
    frame another node publishes right after the welcome reaches the socket (one receiver
    counted by Redis). The welcome waits for the subscription; on loopback the race it
    closes is too short to lose here without that wait."""
    with nodes_on_redis(tmp_path, 1) as (redis, (node,)):
        client = aioredis.Redis.from_url(redis.url)
        try:
            async with connect(node.url) as alice:
                await alice.hello(node.token("alice"))
                said = Said("inn", "bob", "guard", "psst, alice")
                data = wire.encode_frame("other-node", said, None, 1)
                assert await client.publish("npc:player:alice", data) == 1
                got = await alice.expect("said")
                assert (got["player"], got["text"]) == ("bob", "psst, alice")
        finally:
            await client.aclose()


async def test_workers_share_one_port(tmp_path: Path) -> None:
    """`--workers 2` serves on one port from two nodes, and each talks to players; the
    metrics address of `[metrics] bind` is printed once (no worker printed it)."""
    with redis_server() as redis:
        config = cluster_config(tmp_path, redis)
        metrics_env = {
            "NPC_SERVER_METRICS_ENABLED": "true",
            "NPC_SERVER_METRICS_BIND": "127.0.0.1:0",
        }
        server = start_server_process(
            env={"NPC_SERVER_CONFIG": str(config), **metrics_env}, args=["--workers", "2"]
        )
        try:
            await workers_serving(server, 2)
            [line] = [line for line in list(server.output) if "npc-server metrics on" in line]
            async with httpx.AsyncClient() as http:
                scraped = await http.get(line.split()[-1])
            assert scraped.status_code == 200 and "npc_server_" in scraped.text
            seen: set[str] = set()
            async with httpx.AsyncClient() as http:
                for _ in range(200):  # the kernel spreads new connections over both
                    response = await http.get(
                        f"{server.http_url}/healthz", headers={"Connection": "close"}
                    )
                    seen.add(response.json()["node"])
                    if len(seen) == 2:
                        break
            assert len(seen) == 2, f"only {seen} answered"
            async with connect(server.url) as alice:
                await alice.hello(server.token("alice"))
                await alice.send({"t": "say", "id": 1, "npc": "guard", "text": "open the gate"})
                end = await alice.expect("turn.end")
                assert end["reason"] == "done" and end["chars"] > 0
            async with httpx.AsyncClient() as http:
                health = (await http.get(f"{server.http_url}/healthz")).json()
            assert health["cluster"]["broker"] and health["cluster"]["routing"]
            assert undocumented(health) == set()  # every field is in docs/protocol.md
            assert undocumented_cluster_counts(health) == set()  # and in docs/cluster.md
        finally:
            assert server.terminate() == 0


def run_command(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:

    return subprocess.run(
        [sys.executable, "-m", "npc_server", *args],
        env={**os.environ, "NPC_SERVER_SECRET": SECRET, "NPC_SERVER_PORT": "0", **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_several_workers_without_redis_are_refused() -> None:
    """`--workers 2` with no Redis exits 2 and says what to set."""
    result = run_command(["--workers", "2"], {})
    assert result.returncode == 2
    assert "needs [cluster] redis_url (or NPC_SERVER_CLUSTER_REDIS_URL)" in result.stderr
    assert "Traceback" not in result.stderr


def test_workers_refuse_in_this_process_what_a_worker_would_refuse() -> None:
    """An open /metrics in production is refused before any worker starts (exit 2, one
    line). Only the workers checked it: 12 restarts, then an exit 0."""
    url = f"redis://127.0.0.1:{free_port()}/0"  # never reached: refused before
    env = {"NPC_SERVER_CLUSTER_REDIS_URL": url, "NPC_SERVER_METRICS_ENABLED": "true"}
    result = run_command(["--workers", "2", "--production"], env)
    assert result.returncode == 2, result.stderr
    assert "[metrics] enabled on the main port needs NPC_SERVER_API_KEY" in result.stderr
    assert "listening" not in result.stdout and "Traceback" not in result.stderr


SUPERVISE_FAILING = """
import sys
from npc_server.config import load_config, with_overrides
from npc_server.workers import MAX_RESTARTS_PER_MINUTE, Supervisor

config = with_overrides(load_config(None), server={"workers": 2, "port": 0})
supervisor = Supervisor(config, [])
supervisor.argv = [sys.executable, "-c", "import sys; sys.exit(3)"]
status = supervisor.run()
print("restarts", len(supervisor._restarts), "of", MAX_RESTARTS_PER_MINUTE + 1)
sys.exit(status)
"""


def test_a_supervisor_whose_workers_keep_dying_exits_non_zero() -> None:
    """Workers that fail at once are restarted up to the limit; then the server stops with
    status 1, so a unit's Restart=on-failure restarts it (it exited 0). In a process of its
    own: the supervisor's os.wait() would reap any child of the test runner."""
    result = subprocess.run(
        [sys.executable, "-c", SUPERVISE_FAILING],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 1, result.stderr
    restarts = next(line for line in result.stdout.splitlines() if line.startswith("restarts"))
    count, _, limit = restarts.split()[1:]
    assert count == limit
    assert "workers keep dying; stopping the server" in result.stderr


def test_an_unreachable_redis_refuses_to_start() -> None:
    """A Redis URL nobody answers: one line naming the setting and the URL, exit 2."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = run_command([], {"NPC_SERVER_CLUSTER_REDIS_URL": url})
    assert result.returncode == 2
    assert f"[cluster] redis_url: cannot reach Redis at {url}" in result.stderr
    assert "Traceback" not in result.stderr


async def cluster_available(node: ServerProcess) -> bool:
    async with httpx.AsyncClient() as http:
        health = (await http.get(f"{node.http_url}/healthz")).json()
    available: bool = health["cluster"]["available"]
    return available


async def wait_for_cluster(node: ServerProcess, available: bool) -> None:
    """Until the node's /healthz says it can (or cannot) reach Redis."""
    for _ in range(600):  # 30 s: polling the server's own report, with a deadline
        if await cluster_available(node) is available:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the node never reported available={available}")


async def test_a_join_while_redis_is_away_is_unavailable_and_works_after(tmp_path: Path) -> None:
    """Without Redis a join gets `unavailable` with retry_after, the socket stays; after, it joins."""
    with redis_server() as redis:
        config = cluster_config(tmp_path, redis)
        node = start_server_process(env={"NPC_SERVER_CONFIG": str(config)})
        try:
            async with connect(node.url) as alice:
                await alice.hello(node.token("alice"))
                assert await cluster_available(node)
                redis.stop()
                await wait_for_cluster(node, available=False)
                await alice.send({"t": "join", "id": 1, "room": "inn"})
                [*_, refused] = await alice.recv_until(lambda f: f.get("id") == 1)
                assert refused["t"] == "error" and refused["code"] == "unavailable"
                assert refused["retry_after"] > 0
                await alice.send({"t": "say", "id": 2, "npc": "guard", "text": "open the gate"})
                assert (await alice.expect("turn.end"))["reason"] == "done"
                redis.start()
                await wait_for_cluster(node, available=True)
                await alice.send({"t": "join", "id": 3, "room": "inn"})
                [*_, joined] = await alice.recv_until(lambda f: f.get("id") == 3)
                assert joined["t"] == "ack"
        finally:
            assert node.terminate() == 0
