"""The API's request bodies and errors: field checks that name the field, and the OpenAPI text.

`Body` reads one JSON object field by field; each check raises `ApiError(400)`
with a message naming the field and what was expected, and `done()` refuses
fields the endpoint does not know (a typo would otherwise be ignored).
`refuse_repeated_keys` refuses a body with a key twice in one object.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgpack
import orjson
from quart import Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from npc_server.bans import MAX_BAN_S
from npc_server.protocol.codec import _ROOM as ROOM_PATTERN
from npc_server.protocol.codec import MAX_CONTEXT_DEPTH, ROOM_RULE, nesting, string_keys
from npc_server.protocol.frames import Limits
from npc_server.tokens import MAX_PLAYER_CHARS
from npc_server.turns import Audience

if TYPE_CHECKING:
    from npc_server.node import Node

MAX_BODY_BYTES = 64 * 1024
MAX_NAME_CHARS = 128
MAX_TTL_S = 7 * 86400  # a player token's longest life
MAX_WATCH_ROOMS = 64  # rooms one watch token names
# A body that stops coming is answered 408 after this (Quart alone waits 60 s).
BODY_TIMEOUT_S = 5.0


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


def problem(
    status: int,
    code: str,
    message: str,
    retry_after: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The error response; 429 and 503 carry `Retry-After` when known."""
    error: dict[str, Any] = {"code": code, "message": message}
    headers = dict(headers or {})
    if retry_after is not None:
        error["retry_after"] = retry_after
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    body = orjson.dumps({"error": error})
    return Response(body, status=status, content_type="application/json", headers=headers)


def _too_large() -> ApiError:
    return ApiError(413, "too_large", f"the body is over {MAX_BODY_BYTES} bytes")


async def read_body() -> bytes:
    """The request's body: 413 past MAX_BODY_BYTES (announced or as it comes), 408 if it
    has not all come within BODY_TIMEOUT_S. Hypercorn then closes the connection."""
    # Not `get_data()` with Quart's `body_timeout`: it buffers up to the app's
    # MAX_CONTENT_LENGTH (16 MB) before any check here, and answers that with its own 413.
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise _too_large()
    data = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            async for chunk in request.body:
                data += chunk
                if len(data) > MAX_BODY_BYTES:
                    raise _too_large()
    except TimeoutError:
        message = f"the body did not all arrive within {BODY_TIMEOUT_S:g} s"
        raise ApiError(408, "timeout", message) from None
    except RequestEntityTooLarge:  # Quart's own bound, should chunks pile up unread
        raise _too_large() from None
    return bytes(data)


class _Repeated(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _once_each(pairs: list[tuple[str, Any]]) -> None:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _Repeated(key)
        seen.add(key)


def _ignored(_: str) -> None:
    return None


def refuse_repeated_keys(data: bytes) -> None:
    """Raise ApiError(400) naming a key that one object of `data` (JSON orjson took) has
    twice, at any depth. orjson keeps the last silently, so `{"player": "x", "player":
    "admin"}` would be admin here and may be x to a proxy or a check in front of us.
    orjson cannot tell; the standard parser hands over each object's pairs, and is only
    asked to check (no object or number is built: the hooks return None). At most
    MAX_BODY_BYTES, so a second parse is cheap."""
    try:
        json.loads(data, object_pairs_hook=_once_each, parse_int=_ignored, parse_float=_ignored)
    except _Repeated as exc:
        message = f"the key {exc.key!r:.80} appears twice in one object; give each once"
        raise ApiError(400, "invalid", message) from None
    except RecursionError:  # orjson takes 1,024 levels; no field of any endpoint nests so
        raise ApiError(400, "invalid", "the body nests too deep") from None


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
            raise self.fail(key, f"a player id of 1 to {MAX_PLAYER_CHARS} printable characters")
        return value

    def room(self, key: str = "room") -> Any:
        self.read.add(key)
        value = self.doc.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or ROOM_PATTERN.fullmatch(value) is None:
            raise self.fail(key, f"a room name ({ROOM_RULE})")
        return value

    def rooms(self, key: str) -> list[str]:
        """A non-empty list of room names, at most `MAX_WATCH_ROOMS`, each once."""
        self.read.add(key)
        value = self.doc.get(key)
        expected = f"a list of 1 to {MAX_WATCH_ROOMS} room names ({ROOM_RULE})"
        if not isinstance(value, list) or not 0 < len(value) <= MAX_WATCH_ROOMS:
            raise self.fail(key, expected)
        for room in value:
            if not isinstance(room, str) or ROOM_PATTERN.fullmatch(room) is None:
                raise ApiError(400, "invalid", f"'{key}' must be {expected}, got {room!r}")
        return list(dict.fromkeys(value))

    def seconds(self, key: str, *, low: int, high: int, default: int) -> int:
        """A whole number of seconds (`60` or `60.0`, not `1.5`); absent or null: `default`."""
        self.read.add(key)
        value = self.doc.get(key)
        if value is None:
            return default
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (number and low <= value <= high and float(value).is_integer()):
            raise self.fail(key, f"a whole number of seconds from {low} to {high}")
        return int(value)

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


# --- the OpenAPI description -------------------------------------------------

_S = {"type": "string"}
_COUNT = {"type": "integer", "minimum": 0}
_NAMES = {"type": "array", "items": _S}
_PLAYER = {"type": "string", "minLength": 1, "maxLength": MAX_PLAYER_CHARS}
_ROOM = {"type": "string", "pattern": f"^{ROOM_PATTERN.pattern}$"}
_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS}
_PARTIAL = {"partial": {"const": True}, "nodes_missing": _NAMES}  # a cluster node was missing


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field: null counts as absent (as nil does on the socket)."""
    return {**schema, "type": [schema["type"], "null"]}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON object with exactly these fields (the `optional` ones may be left out)."""
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
        "additionalProperties": False,
    }


_AUDIENCE = {"player": _nullable(_PLAYER), "room": _nullable(_ROOM)}
_SESSION = _object(
    {"session": _S, "state": {"enum": ["attached", "detached", "parked"]}, "last_seq": _COUNT},
    {"node": {"type": ["string", "null"]}},
)

# What each error status means, and which codes each endpoint answers with it
# (docs/game-server.md lists the same).
_WHY = {
    400: "a field, or the id in the path, is missing or wrong; the message names it",
    401: "no or wrong bearer key",
    404: "the API is off (`not_found`), or what the request names is unknown",
    405: "the path has no such method; `Allow` lists its own",
    408: f"the body did not all arrive within {BODY_TIMEOUT_S:g} s; the connection closes",
    409: "the player has no session here (neither connected nor held for a resume)",
    413: f"the body is over {MAX_BODY_BYTES} bytes (the connection closes), or `data` over a bound",
    429: "too many wrong keys from this address (`rate_limited`; a right key still "
    "passes), or busy (`busy`); retry after `retry_after` seconds",
    500: "a fault of npc-server's own (logged); worth a bug report",
    502: "cluster: the node that runs it answered something malformed",
    503: "draining, or cluster: Redis or the node that runs it cannot be reached; "
    "retry after `retry_after` seconds",
}
_RETRY = (429, 503)  # these always carry `retry_after` and `Retry-After`
_Codes = dict[int, tuple[str, ...]]
_EVERY: _Codes = {
    401: ("unauthorized",),
    404: ("not_found",),
    429: ("rate_limited",),
    500: ("http_error",),
}
_BODY: _Codes = {400: ("invalid",), 408: ("timeout",), 413: ("too_large",)}
_ERROR_CODES: dict[str, _Codes] = {
    "/api/tokens": _BODY,
    "/api/watch-tokens": _BODY,
    "/api/context": {**_BODY, 404: ("unknown_npc",), 503: ("unavailable",)},
    "/api/say": {
        **_BODY,
        404: ("unknown_npc", "unknown_room"),
        409: ("not_connected",),
        429: ("busy",),
        502: ("unavailable",),
        503: ("draining", "unavailable"),
    },
    "/api/interrupt": {
        **_BODY,
        404: ("unknown_turn",),
        502: ("unavailable",),
        503: ("unavailable",),
    },
    "/api/kick": {**_BODY, 503: ("unavailable",)},
    "/api/unban": {**_BODY, 503: ("unavailable",)},
    "/api/rooms/{room}": {400: ("invalid",), 404: ("unknown_room",), 503: ("unavailable",)},
    "/api/players/{player}": {400: ("invalid",), 503: ("unavailable",)},
}


def _error_codes(path: str) -> _Codes:
    """Every error status of an endpoint and the codes it comes with."""
    codes = {status: list(c) for status, c in _ERROR_CODES[path].items()}
    for status, common in _EVERY.items():
        codes[status] = [*common, *codes.get(status, [])]
    return {status: tuple(codes[status]) for status in sorted(codes)}


def _error(status: int, codes: tuple[str, ...]) -> dict[str, Any]:
    retry = {"retry_after": {"type": "number", "minimum": 0}}
    fields = {"code": {"enum": list(codes)}, "message": _S}
    error = _object({**fields, **retry}) if status in _RETRY else _object(fields, retry)
    answer: dict[str, Any] = {
        "description": f"{', '.join(codes)}: {_WHY[status]}",
        "content": {"application/json": {"schema": _object({"error": error})}},
    }
    if status in _RETRY:
        answer["headers"] = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
    return answer


def _responses(path: str, answer: dict[str, Any]) -> dict[str, Any]:
    ok = {"description": "done", "content": {"application/json": {"schema": answer}}}
    errors = {str(status): _error(status, c) for status, c in _error_codes(path).items()}
    return {"200": ok, **errors}


def _post(path: str, summary: str, body: dict[str, Any], answer: dict[str, Any]) -> Any:
    content = {"application/json": {"schema": body}}
    post = {"summary": summary, "requestBody": {"required": True, "content": content}}
    return {path: {"post": {**post, "responses": _responses(path, answer)}}}


def _get(path: str, summary: str, name: str, schema: dict[str, Any], answer: Any) -> Any:
    parameter = {"name": name, "in": "path", "required": True, "schema": schema}
    get = {"summary": summary, "parameters": [parameter]}
    return {path: {"get": {**get, "responses": _responses(path, answer)}}}


def _paths() -> dict[str, Any]:
    ttl = {"type": "integer", "minimum": 1, "maximum": MAX_TTL_S}
    ban = {"type": "integer", "minimum": 1, "maximum": MAX_BAN_S}
    return {
        **_post(
            "/api/tokens",
            "Issue a player token; `expires_in` is its `exp - iat` in seconds",
            _object({"player": _PLAYER}, {"ttl": _nullable(ttl)}),
            _object({"token": _S, "player": _S, "expires_in": ttl}),
        ),
        **_post(
            "/api/watch-tokens",
            "Issue a watch token for spectators of these rooms (`GET /watch`); `ttl` "
            "defaults to `[watch] token_ttl`",
            _object(
                {
                    "rooms": {
                        "type": "array",
                        "items": _ROOM,
                        "minItems": 1,
                        "maxItems": MAX_WATCH_ROOMS,
                    }
                },
                {"ttl": _nullable(ttl)},
            ),
            _object({"token": _S, "rooms": {"type": "array", "items": _S}, "expires_in": ttl}),
        ),
        **_post(
            "/api/context",
            "Set trusted game state for a player or a room (wins over the client's)",
            _object({"data": {"type": "object"}}, {**_AUDIENCE, "npc": _nullable(_NAME)}),
            _object(
                {"ok": {"const": True}, "scope": _S, "npc": {"type": ["string", "null"]}}, _PARTIAL
            ),
        ),
        **_post(
            "/api/say",
            "Make an NPC speak on a game event (a turn with no player utterance); give "
            "`text`, `event` or both",
            _object(
                {"npc": _NAME},
                {**_AUDIENCE, "text": _nullable({**_S, "minLength": 1}), "event": _nullable(_NAME)},
            ),
            _object({"turn": _S, "queued": {"type": ["integer", "null"], "minimum": 1}}, _PARTIAL),
        ),
        **_post(
            "/api/interrupt",
            "Stop a turn",
            _object({"turn": _NAME}),
            _object(
                {
                    "turn": _S,
                    "interrupted": {"type": "boolean"},
                    "kept": {"type": ["integer", "null"], "minimum": 0},
                }
            ),
        ),
        **_post(
            "/api/kick",
            "Close every socket of a player (close code 4508; in a cluster, on every node); "
            "with `ban`, refuse the player's hellos (4508) for that many seconds",
            _object({"player": _PLAYER}, {"ban": _nullable(ban)}),
            _object(
                {"player": _S, "sessions": _COUNT, "sockets": _COUNT},
                {"banned_for": ban, **_PARTIAL},
            ),
        ),
        **_post(
            "/api/unban",
            "Lift a player's ban (in a cluster, on every node); `lifted`: one was running",
            _object({"player": _PLAYER}),
            _object({"player": _S, "lifted": {"type": "boolean"}}, _PARTIAL),
        ),
        **_get(
            "/api/rooms/{room}",
            "A room's members (in a cluster, from every node)",
            "room",
            _ROOM,
            _object({"room": _S, "members": _NAMES}, _PARTIAL),
        ),
        **_get(
            "/api/players/{player}",
            "A player's sessions, rooms and ban (`banned_for` seconds; in a cluster, from every node, and the sessions "
            "a drained node parked in Redis: state parked, node null)",
            "player",
            _PLAYER,
            _object(
                {
                    "player": _S,
                    "online": {"type": "boolean"},
                    "sessions": {"type": "array", "items": _SESSION},
                    "rooms": _NAMES,
                    "banned_for": _COUNT,
                },
                _PARTIAL,
            ),
        ),
    }


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 description of `/api/`: each endpoint's body, answer and errors."""
    general = _object({"code": _S, "message": _S}, {"retry_after": {"type": "number"}})
    no_method = _error(405, ("method_not_allowed",)) | {"headers": {"Allow": {"schema": _S}}}
    no_path = _error(404, ("not_found",)) | {"description": "not_found: no such endpoint"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "npc-server game API",
            "version": "1",
            "description": 'Every error is `{"error": {code, message, retry_after?}}`. A path '
            "not listed here answers `NoEndpoint`, a method a path lacks `MethodNotAllowed` "
            "(components.responses).",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": _object({"error": general})},
            "headers": {
                "Retry-After": {"description": "whole seconds", "schema": {"type": "integer"}}
            },
            "responses": {"MethodNotAllowed": no_method, "NoEndpoint": no_path},
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
    }


def openapi_json() -> bytes:
    return orjson.dumps(openapi())
