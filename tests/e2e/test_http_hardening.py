"""The HTTP edges an attacker reaches first, over real HTTP: wrong API keys cost their
address (`/api/`, `/metrics`), player ids of any shape in a path, keys given twice in a
body, headers that keep tokens out of caches and pages out of frames, and no redirect
that merges slashes."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote

import httpx
import pytest

from npc_server.config import Config, with_overrides
from tests.e2e.test_api import AUTH, api_config, api_server
from tests.support.client import connect
from tests.support.server import running_server

pytestmark = pytest.mark.e2e

WRONG = {"Authorization": "Bearer guess"}
BURST = 3


def guarded_config() -> Config:
    """The API and /metrics on the main port behind the key; an address bucket of
    BURST that does not refill within a test."""
    limits = {"connects_burst_address": BURST, "connects_per_s_address": 0.001}
    return with_overrides(api_config(limits=limits), metrics={"enabled": True})


@asynccontextmanager
async def client_from(address: str, base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose connections come from `address` (another loopback address)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=10) as http:
        yield http


def assert_limited(answer: httpx.Response) -> None:
    assert answer.status_code == 429, (answer.status_code, answer.text)
    assert answer.headers["Retry-After"] == "5"


async def test_wrong_api_keys_cost_their_address_then_429_while_right_keys_pass() -> None:
    """Past the address's burst of wrong keys (any /api/ path), 429 `rate_limited` with
    Retry-After, /metrics too; the right key still works from that address and another,
    whose own wrong keys are still 401s (they were all 401s, without end)."""
    async with running_server(guarded_config()) as server:
        async with (
            client_from("127.0.0.1", server.http_url) as http,
            client_from("127.0.0.2", server.http_url) as other,
        ):
            paths = ["/api/tokens", "/api/say", "/api/nothing"]
            codes = [(await http.post(p, json={}, headers=WRONG)).status_code for p in paths]
            assert codes == [401] * BURST
            limited = await http.post("/api/tokens", json={"player": "x"}, headers=WRONG)
            assert_limited(limited)
            error = limited.json()["error"]
            assert error["code"] == "rate_limited" and error["retry_after"] == 5
            assert_limited(await http.get("/api/players/alice", headers={}))
            assert_limited(await http.get("/metrics", headers=WRONG))
            right = await http.post("/api/tokens", json={"player": "alice"}, headers=AUTH)
            assert right.status_code == 200
            assert (await http.get("/metrics", headers=AUTH)).status_code == 200
            elsewhere = await other.post("/api/tokens", json={"player": "bob"}, headers=AUTH)
            assert elsewhere.status_code == 200
            assert (await other.get("/api/players/bob", headers=WRONG)).status_code == 401


async def test_wrong_keys_on_metrics_alone_are_throttled() -> None:
    """A scraper guessing the key on /metrics: 401s, then 429 with Retry-After."""
    async with (
        running_server(guarded_config()) as server,
        httpx.AsyncClient(base_url=server.http_url) as http,
    ):
        codes = [(await http.get("/metrics", headers=WRONG)).status_code for _ in range(BURST)]
        assert codes == [401] * BURST
        assert_limited(await http.get("/metrics", headers=WRONG))
        assert (await http.get("/metrics", headers=AUTH)).status_code == 200


def in_path(player: str) -> str:
    """`player` as one path segment: every reserved character and dot percent-encoded
    (a client would otherwise resolve `..` before sending it)."""
    return quote(player, safe="").replace(".", "%2E")


async def test_any_player_id_a_token_names_can_be_looked_up() -> None:
    """A `/` in a player id (`a/b`, leading, doubled, trailing), `..`, `?`, `#` or an
    encoded escape: the lookup finds that player (`a/b` was a 404 `not_found`)."""
    ids = ["a/b", "..", ".", "x?y", "/lead", "a//b", "tail/", "%2F", "#frag"]
    async with api_server() as (server, http), connect(server.url) as client:
        issued = await http.post("/api/tokens", json={"player": "a/b"}, headers=AUTH)
        assert (await client.hello(issued.json()["token"]))["player"] == "a/b"
        for player in ids:
            answer = await http.get(f"/api/players/{in_path(player)}", headers=AUTH)
            assert answer.status_code == 200, (player, answer.text)
            body = answer.json()
            assert body["player"] == player and body["online"] is (player == "a/b"), body
        nothing = await http.get("/api/players/", headers=AUTH)
        assert nothing.status_code == 404 and nothing.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("path", "body", "key"),
    [
        ("/api/tokens", b'{"player": "x", "player": "admin"}', "player"),
        ("/api/tokens", b'{"player": "x", "\\u0070layer": "admin"}', "player"),
        ("/api/context", b'{"player": "alice", "data": {"gold": 1, "gold": 999}}', "gold"),
        ("/api/context", b'{"room": "inn", "data": {"log": [{"a": 1, "a": 1}]}}', "a"),
    ],
)
async def test_a_key_given_twice_is_400_naming_it(path: str, body: bytes, key: str) -> None:
    """A repeated key in any object of the body is refused (the last one won: a token
    for `admin`), naming the key; one key in two objects is no repeat."""
    async with api_server() as (_, http):
        answer = await http.post(path, content=body, headers=AUTH)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == "invalid" and f"'{key}' appears twice" in error["message"]
        nested = {"player": "alice", "data": {"player": "x"}}
        assert (await http.post("/api/context", json=nested, headers=AUTH)).status_code == 200


def development_config() -> Config:
    """No NPC_SERVER_SECRET (/dev/token is on), and the API on."""
    return dataclasses.replace(api_config(), secret=None)


async def test_dev_tokens_refuse_a_key_given_twice() -> None:
    async with (
        running_server(development_config()) as server,
        httpx.AsyncClient(base_url=server.http_url) as http,
    ):
        for path, body in (
            ("/dev/token", b'{"player": "x", "player": "admin"}'),
            ("/dev/watch-token", b'{"room": "inn", "room": "vault"}'),
        ):
            answer = await http.post(path, content=body)
            assert answer.status_code == 400 and "appears twice" in answer.text, answer.text
            assert "token" not in answer.text


async def test_answers_carrying_tokens_are_not_stored() -> None:
    """POST /api/tokens, /dev/token and /dev/watch-token: `Cache-Control: no-store`."""
    async with (
        running_server(development_config()) as server,
        httpx.AsyncClient(base_url=server.http_url) as http,
    ):
        for path, body, headers in (
            ("/api/tokens", {"player": "alice"}, AUTH),
            ("/dev/token", {"player": "alice"}, {}),
            ("/dev/watch-token", {"room": "inn"}, {}),
        ):
            answer = await http.post(path, json=body, headers=headers)
            assert answer.status_code == 200 and answer.json()["token"], path
            assert answer.headers["Cache-Control"] == "no-store", path


async def test_the_pages_are_private_and_refuse_frames() -> None:
    """The HTML pages (their URLs carry `?token=`) are never kept by a shared cache but
    still revalidate; every /play answer refuses to be framed."""
    async with running_server() as server, httpx.AsyncClient(base_url=server.http_url) as http:
        for path in ("/play", "/play/", "/play/index.html", "/play/watch.html", "/play/app.js"):
            answer = await http.get(path, params={"token": "t"})
            assert answer.status_code == 200, path
            assert answer.headers["X-Frame-Options"] == "DENY", path
            assert answer.headers["Content-Security-Policy"] == "frame-ancestors 'none'", path
            cache = {d.strip() for d in answer.headers["Cache-Control"].split(",")}
            if answer.headers["Content-Type"].startswith("text/html"):
                assert {"private", "no-cache"} <= cache and "public" not in cache, path
                again = {"If-None-Match": answer.headers["ETag"]}
                assert (await http.get(path, headers=again)).status_code == 304, path
            else:
                assert "public" in cache, path


async def test_doubled_slashes_are_404s_not_redirects() -> None:
    """`/play//x?token=T` was a 308 to `http://<Host>/play/x?token=T`, and `/api//kick`
    one before the key check: now plain 404s (JSON under /api/, after the key check)."""
    async with api_server() as (_, http):
        evil = {"Host": "evil.example"}
        for path in ("/play//index.html", "/play//watch.html", "//play/app.js"):
            answer = await http.get(path, params={"token": "SECRET"}, headers=evil)
            assert answer.status_code == 404, (path, answer.status_code)
            assert "Location" not in answer.headers and "SECRET" not in answer.text
        kick = await http.post("/api//kick", json={"player": "alice"}, headers=evil)
        assert kick.status_code == 401 and kick.json()["error"]["code"] == "unauthorized"
        kick = await http.post("/api//kick", json={"player": "alice"}, headers=AUTH)
        assert kick.status_code == 404 and kick.json()["error"]["code"] == "not_found"
        assert "Location" not in kick.headers
