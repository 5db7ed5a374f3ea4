"""The API's request bodies and errors: field checks that name the field, and the OpenAPI text.

`Body` reads one JSON object field by field; each check raises `ApiError(400)`
with a message naming the field and what was expected, and `done()` refuses
fields the endpoint does not know (a typo would otherwise be ignored).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import msgpack
import orjson
from quart import Response

from npc_server.protocol.codec import _ROOM as ROOM_PATTERN
from npc_server.protocol.codec import MAX_CONTEXT_DEPTH, ROOM_RULE, nesting, string_keys
from npc_server.protocol.frames import Limits
from npc_server.tokens import MAX_PLAYER_CHARS
from npc_server.turns import Audience

if TYPE_CHECKING:
    from npc_server.node import Node

MAX_BODY_BYTES = 64 * 1024
MAX_NAME_CHARS = 128


class ApiError(Exception):
    """An API request refused with an HTTP status and `{"error": {code, message}}`."""

    def __init__(
        self, status: int, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def problem(status: int, code: str, message: str, retry_after: float | None = None) -> Response:
    """The error response; 429 and 503 carry `Retry-After` when known."""
    error: dict[str, Any] = {"code": code, "message": message}
    headers = {}
    if retry_after is not None:
        error["retry_after"] = retry_after
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    body = orjson.dumps({"error": error})
    return Response(body, status=status, content_type="application/json", headers=headers)


def _kind(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


class Body:
    """Typed access to one request body's fields."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.read: set[str] = set()

    def fail(self, key: str, expected: str) -> ApiError:
        got = _kind(self.doc[key]) if key in self.doc else "nothing"
        return ApiError(400, "invalid", f"'{key}' must be {expected}, got {got}")

    def string(self, key: str, *, required: bool, max_chars: int = MAX_NAME_CHARS) -> Any:
        self.read.add(key)
        value = self.doc.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value or len(value) > max_chars:
            raise self.fail(key, f"a non-empty string of at most {max_chars} characters")
        return value

    def player(self, key: str, *, required: bool = True) -> Any:
        value = self.string(key, required=required, max_chars=MAX_PLAYER_CHARS)
        if value is not None and not value.isprintable():
            raise self.fail(key, "a player id of printable characters")
        return value

    def room(self, key: str = "room") -> Any:
        self.read.add(key)
        value = self.doc.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or ROOM_PATTERN.fullmatch(value) is None:
            raise self.fail(key, f"a room name ({ROOM_RULE})")
        return value

    def number(self, key: str, *, low: float, high: float, default: float) -> float:
        self.read.add(key)
        value = self.doc.get(key, default)
        bad = isinstance(value, bool) or not isinstance(value, int | float)
        if bad or not low <= value <= high:
            raise self.fail(key, f"a number from {low:g} to {high:g}")
        return float(value)

    def npc(self, node: Node, *, required: bool) -> str | None:
        npc: str | None = self.string("npc", required=required)
        if npc is not None and npc not in node.npcs:
            known = ", ".join(sorted(node.npcs)) or "none"
            raise ApiError(404, "unknown_npc", f"'npc': no NPC {npc!r}; known: {known}")
        return npc

    def audience(self) -> Audience:
        """Exactly one of `player` and `room`."""
        player, room = self.player("player", required=False), self.room()
        if (player is None) == (room is None):
            raise ApiError(400, "invalid", "give exactly one of 'player' and 'room'")
        return Audience(player=player, room=room)

    def context_data(self, limits: Limits) -> dict[str, Any]:
        """`data`: an object bounded as a client's `context.data` is."""
        self.read.add("data")
        data = self.doc.get("data")
        if not isinstance(data, dict):
            raise self.fail("data", "an object")
        if len(data) > limits.context_keys:
            raise ApiError(413, "too_large", f"'data' has over {limits.context_keys} keys")
        if nesting(data) > MAX_CONTEXT_DEPTH:
            raise self.fail("data", f"an object nesting at most {MAX_CONTEXT_DEPTH} levels")
        if not string_keys(data):  # JSON bodies have none other; Redis's copies may
            raise self.fail("data", "an object whose keys are strings")
        if len(msgpack.packb(data)) > limits.context_bytes:
            raise ApiError(413, "too_large", f"'data' is over {limits.context_bytes} bytes")
        return data

    def done(self) -> None:
        """Refuse fields nothing read."""
        extra = sorted(set(self.doc) - self.read)
        if extra:
            known = ", ".join(f"'{k}'" for k in sorted(self.read))
            raise ApiError(400, "invalid", f"unknown field '{extra[0]}'; expected {known}")


def _post(summary: str, required: list[str], props: dict[str, Any], answer: str) -> Any:
    schema: dict[str, Any] = {"type": "object", "required": required, "properties": props}
    schema["additionalProperties"] = False
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": {"200": {"description": answer}, **_ERRORS},
        }
    }


def _get(summary: str, name: str, answer: str) -> Any:
    parameter = {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "get": {
            "summary": summary,
            "parameters": [parameter],
            "responses": {"200": {"description": answer}, **_ERRORS},
        }
    }


_ERROR_BODY = {"$ref": "#/components/schemas/Error"}
_ERRORS = {
    str(status): {
        "description": why,
        "content": {"application/json": {"schema": _ERROR_BODY}},
    }
    for status, why in (
        (400, "a field is missing or wrong; the message names it"),
        (401, "no or wrong bearer key"),
        (404, "unknown NPC, room, turn or endpoint (or the API is off)"),
        (429, "busy; retry after `retry_after` seconds"),
    )
}
_S = {"type": "string"}
_AUDIENCE = {"player": _S, "room": _S}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 description of `/api/`."""
    paths = {
        "/api/tokens": _post(
            "Issue a player token", ["player"], {"player": _S, "ttl": {"type": "number"}}, "{token}"
        ),
        "/api/context": _post(
            "Set trusted game state for a player or a room (wins over the client's)",
            ["data"],
            {**_AUDIENCE, "npc": _S, "data": {"type": "object"}},
            "{ok, scope, npc} (in a cluster also partial, nodes_missing)",
        ),
        "/api/say": _post(
            "Make an NPC speak on a game event (a turn with no player utterance)",
            ["npc"],
            {**_AUDIENCE, "npc": _S, "text": _S, "event": _S},
            "{turn, queued}",
        ),
        "/api/interrupt": _post("Stop a turn", ["turn"], {"turn": _S}, "{turn, kept}"),
        "/api/kick": _post(
            "Close every socket of a player (close code 4508; in a cluster, on every node)",
            ["player"],
            {"player": _S},
            "{player, sessions, sockets, partial?, nodes_missing?}",
        ),
        "/api/rooms/{room}": _get(
            "A room's members (in a cluster, from every node)",
            "room",
            "{room, members, partial?, nodes_missing?}",
        ),
        "/api/players/{player}": _get(
            "A player's sessions and rooms (in a cluster, from every node, and the sessions "
            "a drained node parked in Redis: state parked, node null)",
            "player",
            "{player, online, sessions[{session, state, last_seq, node?}], rooms, partial?, "
            "nodes_missing?}",
        ),
    }
    error = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": _S, "message": _S, "retry_after": {"type": "number"}},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "npc-server game API", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": error},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


def openapi_json() -> bytes:
    return orjson.dumps(openapi())
