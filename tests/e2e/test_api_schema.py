"""/api/openapi.json against what the server really sends: every endpoint's answers and
errors, over real HTTP, each checked against the schema the document gives for it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from npc_server import api_schema
from npc_server.app import drain
from tests.e2e.test_api import AUTH, LONG, api_config, api_server, player
from tests.support.client import connect
from tests.support.game_server import API_KEY
from tests.support.server import REPO, RunningServer

pytestmark = pytest.mark.e2e

# What only a cluster (or a bug) answers: not reachable from one process.
CLUSTER_ONLY_FIELDS = {"partial", "nodes_missing", "node"}
UNREACHED_HERE = {(500, "http_error"), (502, "unavailable"), (503, "unavailable")}


@dataclass(frozen=True)
class Answer:
    method: str
    path: str  # the OpenAPI path, e.g. /api/rooms/{room}
    status: int
    headers: httpx.Headers
    body: Any


class Recorder:
    """An HTTP client to the API that keeps every answer with the endpoint it came from."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.answers: list[Answer] = []

    async def call(self, method: str, path: str, url: str = "", **kwargs: Any) -> Answer:
        kwargs.setdefault("headers", AUTH)
        reply = await self.http.request(method, url or path, **kwargs)
        assert reply.headers["content-type"] == "application/json", (url or path, reply.text)
        answer = Answer(method.lower(), path, reply.status_code, reply.headers, reply.json())
        self.answers.append(answer)
        return answer

    def keep(self, method: str, path: str, status: int, body: bytes) -> None:
        """An answer read off a raw socket."""
        self.answers.append(Answer(method, path, status, httpx.Headers(), orjson.loads(body)))


# --- a small JSON Schema check: the keywords api_schema uses, and no others ---------

KNOWN = {
    "type", "properties", "required", "additionalProperties", "items", "enum", "const",
    "minimum", "maximum", "minLength", "maxLength", "pattern", "$ref",
}  # fmt: skip
TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def is_a(value: Any, kind: str) -> bool:
    """JSON Schema's types, but an integer is an int: 3600.0 is not what to send."""
    if kind == "integer":
        return type(value) is int
    if kind == "number":
        return type(value) in (int, float)
    return isinstance(value, TYPES[kind])


def problems(
    value: Any, schema: dict[str, Any], doc: dict[str, Any], at: str = ""
) -> Iterator[str]:
    """Each way `value` does not fit `schema` (refs resolved in `doc`)."""
    unknown = set(schema) - KNOWN
    assert not unknown, f"{at}: the check does not know {unknown}"
    if "$ref" in schema:
        target: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        yield from problems(value, target, doc, at)
        return
    kinds = schema.get("type")
    if kinds is not None and not any(
        is_a(value, kind) for kind in ([kinds] if isinstance(kinds, str) else kinds)
    ):
        yield f"{at or '.'}: {value!r} is not {kinds}"
        return
    if "enum" in schema and value not in schema["enum"]:
        yield f"{at}: {value!r} not in {schema['enum']}"
    if "const" in schema and value != schema["const"]:
        yield f"{at}: {value!r} is not {schema['const']!r}"
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and not schema.get("minimum", value) <= value <= schema.get("maximum", value):
        yield f"{at}: {value!r} out of range"
    if isinstance(value, str):
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            yield f"{at}: {value!r} has the wrong length"
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            yield f"{at}: {value!r} does not match {schema['pattern']}"
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            yield from problems(item, schema["items"], doc, f"{at}[{i}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                yield f"{at}: {key!r} is missing"
        for key, item in value.items():
            if key in properties:
                yield from problems(item, properties[key], doc, f"{at}.{key}")
            elif schema.get("additionalProperties") is False:
                yield f"{at}: {key!r} is not in the schema"


def response_schema(doc: dict[str, Any], answer: Answer) -> dict[str, Any]:
    """The response object the document gives for this answer."""
    operation = doc["paths"].get(answer.path, {}).get(answer.method)
    if operation is None:  # a method or path the document does not list
        name = "NoEndpoint" if answer.path not in doc["paths"] else "MethodNotAllowed"
        response: dict[str, Any] = doc["components"]["responses"][name]
        return response
    responses = operation["responses"]
    assert str(answer.status) in responses, f"{answer.method} {answer.path}: {answer.status}"
    documented: dict[str, Any] = responses[str(answer.status)]
    return documented


def fields_of(value: Any) -> set[str]:
    """Every key at every level of a JSON value."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in fields_of(v)}
    if isinstance(value, list):
        return {k for v in value for k in fields_of(v)}
    return set()


def documented_errors(operation: dict[str, Any]) -> set[tuple[int, str]]:
    """Each (status, code) an operation's responses list."""
    pairs: set[tuple[int, str]] = set()
    for status, response in operation["responses"].items():
        if status != "200":
            schema = response["content"]["application/json"]["schema"]
            codes = schema["properties"]["error"]["properties"]["code"]["enum"]
            pairs.update((int(status), code) for code in codes)
    return pairs


def schema_fields(schema: dict[str, Any]) -> set[str]:
    found = set(schema.get("properties", {}))
    for item in schema.get("properties", {}).values():
        found |= schema_fields(item)
    return found | (schema_fields(schema["items"]) if "items" in schema else set())


# --- the answers -----------------------------------------------------------------

POSTS = [
    "/api/tokens",
    "/api/watch-tokens",
    "/api/context",
    "/api/say",
    "/api/interrupt",
    "/api/kick",
    "/api/unban",
]
BAD = {
    "/api/tokens": {"player": "alice", "ttl": 1.5},
    "/api/watch-tokens": {"rooms": ["a b"]},
    "/api/context": {"player": "alice", "data": [1]},
    "/api/say": {"npc": "guard", "room": "tavern"},
    "/api/interrupt": {},
    "/api/kick": {"player": 5},
    "/api/unban": {"player": ""},
}


async def successes(api: Recorder) -> None:
    """Every endpoint's 200, with each optional answer field that one process sends."""
    await api.call("POST", "/api/tokens", json={"player": "bob", "ttl": 60})
    await api.call("POST", "/api/watch-tokens", json={"rooms": ["tavern"], "ttl": 60})
    room_context = {"room": "tavern", "data": {"alarm": True}}
    await api.call("POST", "/api/context", json=room_context)
    await api.call("POST", "/api/context", json={"player": "alice", "npc": "merchant", "data": {}})
    say = {"npc": "merchant", "player": "alice", "text": "what do you sell?"}
    first = await api.call("POST", "/api/say", json=say)
    queued = await api.call("POST", "/api/say", json={**say, "text": None, "event": "greet"})
    assert first.body["queued"] is None and queued.body["queued"] == 1
    busy = await api.call("POST", "/api/say", json={"npc": "guard", "room": "tavern", "text": "x"})
    assert busy.status == 429
    await api.call("POST", "/api/interrupt", json={"turn": first.body["turn"]})
    await api.call("GET", "/api/rooms/{room}", "/api/rooms/tavern")
    await api.call("GET", "/api/players/{player}", "/api/players/alice")
    await api.call("POST", "/api/kick", json={"player": "nobody"})
    await api.call("POST", "/api/kick", json={"player": "nobody", "ban": 60})
    await api.call("POST", "/api/unban", json={"player": "nobody"})


async def errors(api: Recorder, server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each error each endpoint can answer in one process."""
    big = b'{"x": "' + b"x" * api_schema.MAX_BODY_BYTES + b'"}'
    for path in POSTS:
        await api.call("POST", path, json=BAD[path])
        await api.call("POST", path, json={}, headers={})
        await api.call("PUT", path)
        await api.call("POST", path, content=big)
        await api.call("GET", "/api/nothing", f"{path}/nothing")
    for path, bad, good in (
        ("/api/rooms/{room}", "a b", "x"),
        ("/api/players/{player}", "a" * 129, "x"),
    ):
        prefix = path.partition("{")[0]
        await api.call("GET", path, prefix + bad)
        await api.call("GET", path, prefix + good, headers={})
        await api.call("DELETE", path, prefix + good)
    await api.call("GET", "/api/rooms/{room}", "/api/rooms/cellar")
    for body in (
        {"npc": "nobody", "room": "tavern", "text": "x"},
        {"npc": "guard", "room": "cellar", "text": "x"},
        {"npc": "guard", "player": "ghost", "text": "x"},
    ):
        await api.call("POST", "/api/say", json=body)
    await api.call("POST", "/api/context", json={"npc": "nobody", "player": "a", "data": {}})
    many = {f"k{i}": i for i in range(100)}
    await api.call("POST", "/api/context", json={"player": "alice", "data": many})
    await api.call("POST", "/api/interrupt", json={"turn": "t-nope"})
    monkeypatch.setattr(api_schema, "BODY_TIMEOUT_S", 0.2)
    for path in POSTS:
        api.keep("post", path, *await stalled(server, path))
    monkeypatch.undo()


async def locked_out(api: Recorder) -> None:
    """Each endpoint's 429 `rate_limited`: wrong keys until the address's bucket is empty
    (it does not refill within the test), then one more to each endpoint."""
    wrong = {"Authorization": "Bearer guess"}
    for _ in range(1000):
        if (await api.http.get("/api/rooms/x", headers=wrong)).status_code == 429:
            break
    else:
        pytest.fail("wrong keys were never refused with 429")
    for path in POSTS:
        await api.call("POST", path, json={}, headers=wrong)
    await api.call("GET", "/api/rooms/{room}", "/api/rooms/x", headers=wrong)
    await api.call("GET", "/api/players/{player}", "/api/players/x", headers={})


async def stalled(server: RunningServer, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {API_KEY}\r\n"
    writer.write(f"{head}Content-Length: 10\r\n\r\n{{".encode())
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head_bytes, _, body = raw.partition(b"\r\n\r\n")
    return int(head_bytes.split(b" ", 2)[1]), body


async def test_every_answer_of_every_endpoint_fits_the_openapi_document(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each real body fits the document's schema for its endpoint and status (no field
    more, none missing or renamed), every status the document lists for an endpoint is
    one it answers (bar cluster-only ones), and every answer field was seen sent."""
    limits = {"max_generations": 1, "connects_per_s_address": 0.001}
    config = api_config(scripted=LONG, limits=limits)
    async with api_server(config) as (server, http), connect(server.url) as alice:
        await player(server, alice, "alice", "tavern")
        api = Recorder(http)
        doc = (await api.call("GET", "/api/openapi.json", headers={})).body
        await successes(api)
        await errors(api, server, monkeypatch)
        await locked_out(api)
        await api.call("POST", "/api/kick", json={"player": "alice"})
        await drain(server.node, grace=0)
        await api.call("POST", "/api/say", json={"npc": "guard", "room": "tavern", "text": "x"})
    async with api_server(api_config(api_key=None)) as (_, off):
        api.http = off
        for path in POSTS:
            await api.call("POST", path, json={})
        await api.call("GET", "/api/rooms/{room}", "/api/rooms/x")
        await api.call("GET", "/api/players/{player}", "/api/players/x")
    answers = [a for a in api.answers if a.path != "/api/openapi.json"]
    for answer in answers:
        response = response_schema(doc, answer)
        schema = response["content"]["application/json"]["schema"]
        found = list(problems(answer.body, schema, doc))
        assert not found, (answer.method, answer.path, answer.status, answer.body, found)
        for header in response.get("headers", {}):
            if answer.headers:  # raw-socket answers keep no headers
                assert header in answer.headers, (answer, header)
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            mine = [a for a in answers if (a.path, a.method) == (path, method)]
            seen = {(a.status, a.body["error"]["code"]) for a in mine if a.status != 200}
            listed = documented_errors(operation)
            assert seen == listed - UNREACHED_HERE, (path, sorted(seen ^ listed))
            ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
            sent = set().union(*(fields_of(a.body) for a in mine if a.status == 200))
            assert schema_fields(ok) - CLUSTER_ONLY_FIELDS == sent, (path, sent)


def test_the_doc_lists_every_status_and_code_the_schema_does() -> None:
    """docs/game-server.md's table of errors has a row for each status and code of
    /api/openapi.json, and no other."""
    text = (REPO / "docs" / "game-server.md").read_text(encoding="utf-8")
    rows = {(int(s), c) for s, c in re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", text, re.M)}
    doc = api_schema.openapi()
    pairs = {
        pair
        for item in doc["paths"].values()
        for op in item.values()
        for pair in documented_errors(op)
    }
    named = doc["components"]["responses"]  # for paths and methods the document lacks
    pairs |= documented_errors({"responses": {"405": named["MethodNotAllowed"]}})
    pairs |= documented_errors({"responses": {"404": named["NoEndpoint"]}})
    assert rows == pairs, (sorted(rows - pairs), sorted(pairs - rows))
