"""GET /metrics over a real socket: counts after a scripted conversation, and who may scrape."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from npc_server.backends import GenerationError, GenerationRequest, Piece, TextPiece
from npc_server.config import Config, with_overrides
from npc_server.events import NodeEvent, TurnEnded
from npc_server.protocol.codes import CloseCode
from tests.support.client import RawClient, connect
from tests.support.server import (
    REPO,
    SECRET,
    ServerProcess,
    running_server,
    server_config,
    start_server_process,
)
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

API_KEY = "metrics-key-for-tests"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class FailingBackend:
    """Says a few words, then fails like a model server that went away."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        yield TextPiece("Halt")
        raise GenerationError("the model server went away")

    async def aclose(self) -> None:
        return None


def fetch(url: str, key: str | None = API_KEY) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, with the bearer key if given."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"] or "", exc.read().decode()


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels, through prometheus-client's parser."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(http_url: str) -> Samples:
    status, content_type, body = await asyncio.to_thread(fetch, http_url + "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=")
    return parse(body)


def metrics_config() -> Config:
    """Metrics on, behind API_KEY; one turn per player at a time; long replies to cut."""
    config = server_config(
        limits={"turns_per_player": 1},
        scripted={"tokens_per_second": 40, "long_reply_chars": 2000},
    )
    return replace(with_overrides(config, metrics={"enabled": True}), api_key=API_KEY)


async def reply(client: RawClient) -> tuple[str, str]:
    """The text and reason of the next turn the client sees, to its end."""
    text = ""
    while True:
        frame = await client.recv()
        if frame["t"] == "delta":
            text += frame["text"]
        elif frame["t"] == "turn.end":
            return text, frame["reason"]


async def test_a_scripted_conversation_is_counted_exactly() -> None:
    """Connects, sessions, turns by reason, limits, errors, closes and latencies add up."""
    config = metrics_config()
    async with running_server(config, backends={"guard": FailingBackend()}) as server:
        ended: list[TurnEnded] = []

        def keep(event: NodeEvent) -> None:
            if isinstance(event, TurnEnded):
                ended.append(event)

        server.node.events.subscribe(keep)
        async with connect(server.url) as mallory:
            await mallory.send({"t": "hello", "token": "not-a-token"})
            assert await mallory.close_code() == CloseCode.AUTH_FAILED
        async with connect(server.url) as alice:
            await alice.hello(server.token("alice"))
            await alice.send({"t": "say", "id": 1, "npc": "merchant", "text": "what wares?"})
            await alice.expect("delta")
            await alice.send({"t": "say", "id": 2, "npc": "questgiver", "text": "any quest?"})
            busy = await alice.expect("error")
            assert busy["code"] == "busy"
            await alice.send({"t": "interrupt", "id": 3})
            assert (await reply(alice))[1] == "interrupted"
            await alice.send({"t": "say", "id": 4, "npc": "questgiver", "text": "any quest?"})
            quest_text, reason = await reply(alice)
            assert reason == "done" and quest_text
            await alice.send({"t": "say", "id": 5, "npc": "guard", "text": "let me in"})
            assert (await reply(alice))[1] == "error"
            during = await scrape(server.http_url)
        await wait_until(lambda: not server.node.sockets, what="sockets closed")
        after = await scrape(server.http_url)

    assert value(during, "npc_server_sockets") == 1
    assert value(during, "npc_server_sessions", state="attached") == 1
    assert value(during, "npc_server_generation_slots") == config.limits.max_generations
    assert value(after, "npc_server_sockets") == 0
    assert value(after, "npc_server_sessions", state="attached") == 0
    assert value(after, "npc_server_connections_total", transport="websocket") == 2
    assert value(after, "npc_server_auth_failures_total", code="4500") == 1
    assert value(after, "npc_server_sessions_attached_total", outcome="new") == 1
    assert value(after, "npc_server_closes_total", by="server", code="4500") == 1
    assert value(after, "npc_server_closes_total", by="peer", code="1000") == 1
    assert value(after, "npc_server_limited_total", what="turns") == 1
    for npc, reason in (("merchant", "interrupted"), ("questgiver", "done"), ("guard", "error")):
        assert value(after, "npc_server_turns_started_total", npc=npc) == 1
        assert value(after, "npc_server_turns_ended_total", npc=npc, reason=reason) == 1
        assert value(after, "npc_server_turn_duration_seconds_count", npc=npc) == 1
        assert value(after, "npc_server_first_delta_seconds_count", npc=npc) == 1
    assert value(after, "npc_server_interrupt_seconds_count", npc="merchant") == 1
    assert value(after, "npc_server_interrupt_seconds_count", npc="questgiver") == 0
    [merchant_end] = [e for e in ended if e.npc == "merchant"]
    assert value(after, "npc_server_interrupt_seconds_sum", npc="merchant") == pytest.approx(
        merchant_end.interrupt_s
    )
    assert value(after, "npc_server_turn_chars_total", npc="questgiver") == len(quest_text)
    tokens = sum(e.tokens for e in ended if e.npc == "questgiver")
    assert tokens > 0 and value(after, "npc_server_tokens_total", npc="questgiver") == tokens
    assert (
        value(
            after,
            "npc_server_backend_errors_total",
            npc="guard",
            backend="scripted",
            reason="error",
        )
        == 1
    )
    assert (
        value(after, "npc_server_outbound_pushed_total")
        >= value(during, "npc_server_outbound_pushed_total")
        > 0
    )


async def test_a_resume_that_finds_no_session_counts_as_snapshot() -> None:
    """Resume outcomes are a label: a resume of an unknown session is `snapshot`."""
    async with running_server(metrics_config()) as server:
        async with connect(server.url) as alice:
            await alice.hello(server.token("alice"), resume={"session": "s-gone-1", "seq": 4})
        samples = await scrape(server.http_url)
    assert value(samples, "npc_server_sessions_attached_total", outcome="snapshot") == 1
    assert value(samples, "npc_server_sessions_attached_total", outcome="new") == 0


@pytest.mark.parametrize(
    ("key", "status"),
    [(API_KEY, 200), (None, 401), ("wrong-key", 401), (API_KEY + "x", 401)],
)
async def test_metrics_on_the_main_port_need_the_api_key(key: str | None, status: int) -> None:
    """With NPC_SERVER_API_KEY, /metrics answers only `Authorization: Bearer <key>`."""
    async with running_server(metrics_config()) as server:
        got, _, body = await asyncio.to_thread(fetch, server.http_url + "/metrics", key)
    assert got == status
    assert ("npc_server_sockets" in body) == (status == 200)


async def test_metrics_are_not_found_unless_enabled() -> None:
    """By default /metrics does not exist (404), even with the key."""
    async with running_server() as server:
        got, _, _ = await asyncio.to_thread(fetch, server.http_url + "/metrics")
    assert got == 404


ADMIN = re.compile(r"metrics on (http://[\d.]+:\d+)/metrics")


@pytest.fixture
def admin_server() -> Iterator[ServerProcess]:
    env = {"NPC_SERVER_METRICS_ENABLED": "true", "NPC_SERVER_METRICS_BIND": "127.0.0.1:0"}
    server = start_server_process(env=env)
    try:
        yield server
    finally:
        server.kill()


async def test_a_separate_bind_serves_metrics_there_only(admin_server: ServerProcess) -> None:
    """[metrics] bind: /metrics and /healthz on the admin port, without a key; 404 on the main."""
    await wait_until(lambda: any(ADMIN.search(line) for line in admin_server.output))
    [admin] = [m.group(1) for line in admin_server.output if (m := ADMIN.search(line))]
    status, _, body = await asyncio.to_thread(fetch, admin + "/metrics", None)
    assert status == 200 and "npc_server_connections_total" in body
    assert (await asyncio.to_thread(fetch, admin + "/healthz", None))[0] == 200
    assert (await asyncio.to_thread(fetch, admin + "/ws", None))[0] == 404
    main = admin_server.http_url + "/metrics"
    assert (await asyncio.to_thread(fetch, main, None))[0] == 404


def test_production_refuses_an_open_metrics_endpoint() -> None:
    """Metrics on the main port with no API key stop a production start, naming the setting."""
    env = {"NPC_SERVER_SECRET": SECRET, "NPC_SERVER_PORT": "0", "NPC_SERVER_METRICS_ENABLED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "npc_server", "--production"],
        env={**_clean_env(), **env},
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 2
    assert "[metrics] enabled on the main port needs NPC_SERVER_API_KEY" in result.stderr


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("NPC_SERVER_")}


async def test_workers_sharing_a_multiprocess_dir_add_up(tmp_path: Path) -> None:
    """Two processes with one PROMETHEUS_MULTIPROC_DIR: a scrape of either counts both."""
    directory = tmp_path / "prom"
    directory.mkdir()
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "NPC_SERVER_METRICS_ENABLED": "1",
        "NPC_SERVER_API_KEY": API_KEY,
        "NPC_SERVER_METRICS_SAMPLE_INTERVAL": "0.05",
    }
    servers = [start_server_process(env=env) for _ in range(2)]
    try:
        for server in servers:
            async with connect(server.url) as mallory:
                await mallory.send({"t": "hello", "token": "not-a-token"})
                assert await mallory.close_code() == CloseCode.AUTH_FAILED
        async with connect(servers[0].url) as alice:
            await alice.hello(servers[0].token("alice"))
            samples = await scrape(servers[1].http_url)
            # Gauges: worker 0's socket seen from worker 1, once worker 0 has sampled.
            deadline = asyncio.get_running_loop().time() + 10
            while value(samples, "npc_server_sockets") != 1:
                assert asyncio.get_running_loop().time() < deadline, "gauge never sampled"
                samples = await scrape(servers[1].http_url)
    finally:
        for server in servers:
            server.kill()
    assert value(samples, "npc_server_auth_failures_total", code="4500") == 2
    assert value(samples, "npc_server_connections_total", transport="websocket") == 3
