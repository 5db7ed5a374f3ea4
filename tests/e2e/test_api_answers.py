"""The server API's edges over real HTTP: wrong methods, oversized and stalled bodies,
field rules (null, whole seconds, ids no hello could have), draining, and a game say
to a player whose socket dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest

from npc_server import api_schema
from npc_server.app import drain
from npc_server.protocol.codec import ROOM_RULE
from tests.e2e.test_api import AUTH, LONG, api_config, api_server, player
from tests.support.client import Frame, RawClient, connect
from tests.support.game_server import API_KEY
from tests.support.server import RunningServer

pytestmark = pytest.mark.e2e


def assert_error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """A JSON `{"error": {code, message}}` with this status and code; the error."""
    assert answer.status_code == status, (answer.status_code, answer.text)
    assert answer.headers["content-type"] == "application/json", answer.headers
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == code and error["message"], error
    return error


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/api/kick", "OPTIONS, POST"),
        ("PATCH", "/api/kick", "OPTIONS, POST"),
        ("DELETE", "/api/kick", "OPTIONS, POST"),
        ("GET", "/api/tokens", "OPTIONS, POST"),
        ("DELETE", "/api/rooms/x", "GET, HEAD, OPTIONS"),
        ("POST", "/api/players/alice", "GET, HEAD, OPTIONS"),
        ("PUT", "/api/openapi.json", "GET, HEAD, OPTIONS"),
    ],
)
async def test_a_method_the_endpoint_lacks_is_a_json_405_with_allow(
    method: str, path: str, allowed: str
) -> None:
    """Another method on an API path is 405 JSON with `Allow`, never HTML or a 404."""
    async with api_server() as (_, http):
        answer = await http.request(method, path, headers=AUTH)
        error = assert_error(answer, 405, "method_not_allowed")
        assert answer.headers["allow"] == allowed
        assert method in error["message"] and allowed in error["message"]


async def test_unknown_paths_and_methods_are_json_and_need_the_key() -> None:
    """An unknown path is a JSON 404 with any method; without the key, 401 comes first."""
    async with api_server() as (_, http):
        for method in ("GET", "POST", "PUT", "DELETE"):
            assert_error(await http.request(method, "/api/nothing", headers=AUTH), 404, "not_found")
        assert_error(await http.delete("/api/kick"), 401, "unauthorized")


async def test_every_oversized_body_is_413_too_large() -> None:
    """Past 65,536 bytes the answer is 413 `too_large`: a body sent whole, one announced
    (20 MB: answered before it comes), or one in chunks (answered once over the bound)."""
    async with api_server() as (server, http):
        over = b'{"player": "alice", "x": "' + b"x" * 70_000 + b'"}'
        answer = await http.post("/api/tokens", content=over, headers=AUTH)
        assert "65536 bytes" in assert_error(answer, 413, "too_large")["message"]
        head = _request_head("POST /api/say", {"Content-Length": str(20 * 1024 * 1024)})
        status, headers, body = await _exchange(server, head)
        assert status == 413 and b'"code":"too_large"' in body, (status, body)
        assert b"65536 bytes" in body and b"application/json" in headers
        chunk = b"1000\r\n" + b" " * 4096 + b"\r\n"
        head = _request_head("POST /api/tokens", {"Transfer-Encoding": "chunked"})
        last = b"1\r\n \r\n"  # byte 65,537: all sent is read when the answer comes
        status, _, body = await _exchange(server, head + chunk * 16 + last)
        assert status == 413 and b'"code":"too_large"' in body, (status, body)


def _request_head(line: str, headers: dict[str, str]) -> bytes:
    fields = {"Host": "test", "Authorization": f"Bearer {API_KEY}", **headers}
    text = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return f"{line} HTTP/1.1\r\n{text}\r\n".encode()


async def _exchange(server: RunningServer, data: bytes) -> tuple[int, bytes, bytes]:
    """Send raw bytes and read the answer until the server closes: status, head, body."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(data)
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head.lower(), body


async def test_each_bound_of_trusted_context_is_413_too_large() -> None:
    """The documented 413s of /api/context: keys, bytes, and a player's contexts together."""
    async with api_server(api_config(limits={"context_bytes_player": 10_000})) as (_, http):
        many = {"player": "alice", "data": {f"k{i}": i for i in range(65)}}
        answer = await http.post("/api/context", json=many, headers=AUTH)
        assert "64 keys" in assert_error(answer, 413, "too_large")["message"]
        big = {"player": "alice", "data": {"notes": "x" * 8200}}
        answer = await http.post("/api/context", json=big, headers=AUTH)
        assert "8192 bytes" in assert_error(answer, 413, "too_large")["message"]
        part = {"player": "alice", "data": {"notes": "x" * 6000}}
        answer = await http.post("/api/context", json={**part, "npc": "guard"}, headers=AUTH)
        assert answer.status_code == 200, answer.text
        answer = await http.post("/api/context", json={**part, "npc": "merchant"}, headers=AUTH)
        assert "10000 bytes" in assert_error(answer, 413, "too_large")["message"]


async def test_a_body_that_stops_coming_is_408_then_the_connection_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a valid key, a body that never completes gets 408 JSON after the body timeout
    (a few seconds), and the connection closes."""
    monkeypatch.setattr(api_schema, "BODY_TIMEOUT_S", 0.3, raising=False)
    async with api_server() as (server, _):
        head = _request_head("POST /api/tokens", {"Content-Length": "100"})
        started = asyncio.get_running_loop().time()
        status, headers, body = await _exchange(server, head + b'{"player": ')
        waited = asyncio.get_running_loop().time() - started
    assert status == 408 and b"application/json" in headers, (status, body)
    assert b'"code":"timeout"' in body
    assert 0.25 <= waited < 3
    monkeypatch.undo()
    assert 1 <= api_schema.BODY_TIMEOUT_S <= 10  # the shipped bound


async def test_ttl_null_is_the_default_and_expires_in_is_exp_minus_iat() -> None:
    """`ttl: null` counts as absent (as nil does on the socket); `expires_in` is an integer
    number of seconds equal to the token's `exp - iat`; a fractional ttl is refused."""
    async with api_server() as (_, http):
        for ttl, seconds in ((None, 3600), (60, 60), (60.0, 60), (1, 1)):
            body = {"player": "alice", "ttl": ttl}
            answer = await http.post("/api/tokens", json=body, headers=AUTH)
            assert answer.status_code == 200, answer.text
            given = answer.json()
            assert type(given["expires_in"]) is int and given["expires_in"] == seconds
            claims = jwt.decode(given["token"], options={"verify_signature": False})
            assert claims["exp"] - claims["iat"] == seconds
        for bad in (1.5, 0, 604801, "60", True):
            answer = await http.post("/api/tokens", json={"player": "a", "ttl": bad}, headers=AUTH)
            error = assert_error(answer, 400, "invalid")
            assert "'ttl' must be a whole number of seconds from 1 to 604800" in error["message"]


async def test_a_game_say_needs_text_or_event() -> None:
    """`text` and `event` are each optional, but one of them is required."""
    async with api_server() as (_, http):
        for body in ({}, {"text": None, "event": None}):
            said = {"npc": "guard", "room": "gate", **body}
            answer = await http.post("/api/say", json=said, headers=AUTH)
            error = assert_error(answer, 400, "invalid")
            assert "'text', 'event' or both" in error["message"]


async def test_lookups_of_ids_no_hello_could_have_are_400() -> None:
    """A player id over 128 characters or not printable, a room name outside the room
    rule: 400 naming the rule, not an empty answer or `unknown_room`."""
    async with api_server() as (_, http):
        for name in ("a" * 129, "a%01b", "%0A", "a%0Ab"):  # a newline too, not a 404
            error = assert_error(
                await http.get(f"/api/players/{name}", headers=AUTH), 400, "invalid"
            )
            assert "'player'" in error["message"] and "128" in error["message"]
        for name in ("a%20b", "a" * 65, "caf%C3%A9"):
            error = assert_error(await http.get(f"/api/rooms/{name}", headers=AUTH), 400, "invalid")
            assert "'room'" in error["message"] and ROOM_RULE in error["message"]
        assert (await http.get(f"/api/players/{'a' * 128}", headers=AUTH)).status_code == 200
        assert_error(await http.get(f"/api/rooms/{'a' * 64}", headers=AUTH), 404, "unknown_room")
        # Escapes that are not UTF-8 would decode to U+FFFD, a player nobody is.
        error = assert_error(await http.get("/api/players/%ff", headers=AUTH), 400, "invalid")
        assert "not UTF-8" in error["message"]
        ok = await http.get("/api/players/caf%C3%A9", headers=AUTH)
        assert ok.status_code == 200 and ok.json()["player"] == "caf\u00e9"


async def test_a_game_say_while_draining_is_503_draining() -> None:
    """Once the server drains, a game say is refused with 503, `retry_after` and Retry-After."""
    async with api_server() as (server, http), connect(server.url) as alice:
        await player(server, alice, "alice", None)
        await drain(server.node, grace=0)
        body = {"npc": "guard", "player": "alice", "event": "theft"}
        answer = await http.post("/api/say", json=body, headers=AUTH)
        error = assert_error(answer, 503, "draining")
        assert error["retry_after"] == 1.0 and answer.headers["retry-after"] == "1"


async def _detached(server: RunningServer, http: httpx.AsyncClient, name: str) -> None:
    async with asyncio.timeout(5):
        while True:
            info = (await http.get(f"/api/players/{name}", headers=AUTH)).json()
            if [s["state"] for s in info["sessions"]] == ["detached"]:
                return
            await asyncio.sleep(0.01)


async def _until(done: Callable[[], bool]) -> None:
    for _ in range(500):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within 5 s")


def _turn_frames(frames: list[Frame], turn: str) -> list[Frame]:
    return [f for f in frames if f.get("turn") == turn]


@pytest.mark.parametrize("finished", [True, False], ids=["ended-while-away", "still-running"])
async def test_a_game_say_while_the_socket_is_away_arrives_once_on_resume(finished: bool) -> None:
    """The socket drops without a close; the session is held for a resume. A game say then
    runs the turn into the session (not 409): the resume delivers all of it, once."""
    config = api_config(scripted=None if finished else {**LONG, "long_reply_chars": 1000})
    async with api_server(config) as (server, http):
        async with connect(server.url) as first:
            welcome = await first.hello(server.token("alice"))
            old = {"session": welcome["session"], "seq": first.last_seq}
            first.ws.transport.abort()
        await _detached(server, http, "alice")
        body = {"npc": "guard", "player": "alice", "event": "theft", "text": "a thief!"}
        answer = await http.post("/api/say", json=body, headers=AUTH)
        assert answer.status_code == 200, answer.text
        turn = answer.json()["turn"]
        if finished:
            await _until(lambda: server.node.turns.get(turn) is None)
        else:
            assert server.node.turns.get(turn) is not None  # it goes on while resuming
        async with connect(server.url) as second:
            resumed = await second.hello(server.token("alice"), resume=old)
            assert resumed["resumed"] is True and resumed["session"] == old["session"]
            await second.recv_until(lambda f: f["t"] == "turn.end" and f["turn"] == turn)
            await _ping(second)
            mine = _turn_frames(second.received, turn)
    kinds = [f["t"] for f in mine]
    assert kinds.count("turn.start") == 1 == kinds.count("turn.end"), kinds
    assert kinds[0] == "turn.start" and kinds[-1] == "turn.end"
    start, end = mine[0], mine[-1]
    assert (start["caused_by"], start["event"], end["reason"]) == ("game", "theft", "done")
    text = "".join(f["text"] for f in mine if f["t"] == "delta")
    assert len(text) == end["chars"] > 0


async def _ping(client: RawClient) -> None:
    """Everything the server queued before the ping has been read after its pong."""
    await client.send({"t": "ping", "id": "flush"})
    await client.recv_until(lambda f: f["t"] == "pong")


async def test_a_game_say_to_a_player_with_no_session_is_409() -> None:
    """409 `not_connected` only when the player has no session at all (a closed socket
    ends the session)."""
    async with api_server() as (server, http):
        async with connect(server.url) as alice:
            await player(server, alice, "alice", None)
        await _until(lambda: not server.node.hub.is_online("alice"))
        body = {"npc": "guard", "player": "alice", "event": "theft"}
        assert_error(await http.post("/api/say", json=body, headers=AUTH), 409, "not_connected")
