"""The server API under `/api/`: what the game's own backend may do (docs/game-server.md).

JSON in and out, `Authorization: Bearer <NPC_SERVER_API_KEY>` checked by the
app's `ApiKeyGate`. Without a key configured every `/api/` path is 404; a
missing or wrong key is 401, and 429 `rate_limited` once its address has sent
too many. Errors are `{"error": {"code", "message"}}`, and a bad body names the
field (a key repeated in one object too: parsers disagree on which one wins);
so are an unknown path (404) and a method a path lacks (405, with `Allow`).
The description is at `/api/openapi.json` (public once the API is on: it holds
no secrets).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

import msgpack
import orjson
from quart import Blueprint, Response, current_app, has_request_context, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import BaseConverter

from npc_server.api_schema import (
    MAX_TTL_S,
    ApiError,
    Body,
    openapi,
    problem,
    read_body,
    refuse_repeated_keys,
)
from npc_server.bans import MAX_BAN_S
from npc_server.cluster.answers import (
    interrupt_result,
    kick_counts,
    member_list,
    merged_sessions,
    player_part,
    say_result,
    valid,
)
from npc_server.cluster.scatter import Gathered, gather
from npc_server.cluster.trusted import MAX_VERSION, ClockExhausted
from npc_server.node import Node
from npc_server.ops import RETRY_AFTER_S, ApiKeyGate, KeyCheck
from npc_server.protocol.codes import CloseCode
from npc_server.session import SessionState
from npc_server.tokens import issue_token, issue_watch_token
from npc_server.turns import GAME, Audience, Refused

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 3600
CLOCK_RETRY_AFTER = 60.0  # a trusted clock at its end: no post goes until it is reset


class PlayerIdConverter(BaseConverter):
    """`/players/<player:...>`: the rest of the path, whatever it holds. A player id is
    any printable text (`a/b`, `..`, `/x`, sent percent-encoded): the path arrives
    decoded, so the default converter stopped at a `/` and `path` at a leading one."""

    regex = r"[\s\S]+"  # `.` would stop at a newline (`%0A`): a 404, not the id's 400
    part_isolating = False  # it may match across `/`


def api_blueprint(gate: ApiKeyGate | None) -> Blueprint:
    """The `/api/` routes; all 404 when `gate` is None (no key configured)."""
    api = Blueprint("npc_api", __name__, url_prefix="/api")
    # Before the routes below: a rule is compiled, its converters looked up, as it is added.
    api.record_once(lambda state: state.app.url_map.converters.update(player=PlayerIdConverter))

    @api.before_request
    async def authorize() -> Response | None:
        if gate is None:
            return problem(404, "not_found", "the API is off (set NPC_SERVER_API_KEY)")
        if request.path == "/api/openapi.json":
            return None
        verdict = gate.check(request.headers.get("Authorization"), request.remote_addr or "unknown")
        if verdict is KeyCheck.LIMITED:
            message = "too many requests with a wrong key from this address"
            return problem(429, "rate_limited", message, float(RETRY_AFTER_S))
        if verdict is KeyCheck.WRONG:
            return problem(401, "unauthorized", "send Authorization: Bearer <NPC_SERVER_API_KEY>")
        return None

    # Routing fails before a blueprint is chosen, so these are the app's handlers: only
    # paths under /api/ get the API's JSON, after the same key check as its routes.
    @api.app_errorhandler(NotFound)
    @api.app_errorhandler(MethodNotAllowed)
    async def no_route(exc: HTTPException) -> Response | HTTPException:
        path = request.path if has_request_context() else ""
        if path != "/api" and not path.startswith("/api/"):
            return exc  # a page's, or a socket's
        refused = await authorize()
        if refused is not None:
            return refused
        if isinstance(exc, MethodNotAllowed):
            allowed = ", ".join(sorted(exc.valid_methods or ()))
            message = f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
            return problem(405, "method_not_allowed", message, headers={"Allow": allowed})
        return problem(404, "not_found", f"no API endpoint {request.path}; see /api/openapi.json")

    @api.errorhandler(ApiError)
    async def refused(exc: ApiError) -> Response:
        return problem(exc.status, exc.code, exc.message, exc.retry_after)

    @api.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return problem(exc.code or 500, "http_error", exc.description or exc.name)

    api.add_url_rule("/openapi.json", view_func=_openapi, methods=["GET"])
    api.add_url_rule("/tokens", view_func=_tokens, methods=["POST"])
    api.add_url_rule("/watch-tokens", view_func=_watch_tokens, methods=["POST"])
    api.add_url_rule("/context", view_func=_context, methods=["POST"])
    api.add_url_rule("/say", view_func=_say, methods=["POST"])
    api.add_url_rule("/interrupt", view_func=_interrupt, methods=["POST"])
    api.add_url_rule("/kick", view_func=_kick, methods=["POST"])
    api.add_url_rule("/unban", view_func=_unban, methods=["POST"])
    api.add_url_rule("/rooms/<room>", view_func=_room, methods=["GET"])
    api.add_url_rule("/players/<player:player>", view_func=_player, methods=["GET"])
    return api


def _node() -> Node:
    node: Node = current_app.extensions["npc_server.node"]
    return node


def _json(body: Mapping[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


async def _body() -> Body:
    data = await read_body()
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid", "the body must be a JSON object") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "invalid", "the body must be a JSON object")
    refuse_repeated_keys(data)
    return Body(doc)


async def _openapi() -> Response:
    return _json(openapi())


async def _tokens() -> Response:
    """POST /api/tokens {player, ttl?} -> {token, player, expires_in}: `expires_in` is the
    token's `exp - iat` (whole seconds: `int(now + ttl) - int(now)` is then `ttl`)."""
    body = await _body()
    player = body.player("player")
    ttl = body.seconds("ttl", low=1, high=MAX_TTL_S, default=DEFAULT_TTL_S)
    body.done()
    token = issue_token(current_app.extensions["npc_server.secret"], player, ttl)
    return _credential({"token": token, "player": player, "expires_in": ttl})


async def _watch_tokens() -> Response:
    """POST /api/watch-tokens {rooms, ttl?} -> {token, rooms, expires_in}: a token that
    may watch these rooms over SSE (`GET /watch`), as `npc-server token --watch` makes,
    so that the game never needs the server's secret."""
    body = await _body()
    rooms = body.rooms("rooms")
    default = max(1, round(_node().config.watch.token_ttl))
    ttl = body.seconds("ttl", low=1, high=MAX_TTL_S, default=default)
    body.done()
    token = issue_watch_token(current_app.extensions["npc_server.secret"], rooms, ttl)
    return _credential({"token": token, "rooms": rooms, "expires_in": ttl})


def _credential(answer: dict[str, Any]) -> Response:
    """An answer that carries a token: no cache keeps a copy."""
    response = _json(answer)
    response.headers["Cache-Control"] = "no-store"
    return response


async def _context() -> Response:
    """POST /api/context {player | room, npc?, data}: trusted game state."""
    node = _node()
    body = await _body()
    scope = body.audience()
    npc = body.npc(node, required=False)
    data = body.context_data(node.config.limits.protocol_limits())
    body.done()
    key = f"room:{scope.room}" if scope.room is not None else f"player:{scope.player}"
    if node.cluster is not None:
        return _json(await _context_everywhere(node, key, npc, data))
    size = len(msgpack.packb(data))
    if not node.contexts.trusted.set_nowait(key, npc, data, size):
        raise _over_budget(node, key)
    return _json({"ok": True, "scope": key, "npc": npc})


def _unreachable() -> ApiError:
    return ApiError(503, "unavailable", "the cluster cannot be reached", 1.0)


def _over_budget(node: Node, key: str) -> ApiError:
    budget = node.contexts.trusted.max_bytes_per_scope
    return ApiError(413, "too_large", f"'data': the contexts of {key} would be over {budget} bytes")


async def _context_everywhere(
    node: Node, key: str, npc: str | None, data: dict[str, Any]
) -> dict[str, Any]:
    """Set in Redis (for nodes that come later), then here and on every live node, with
    the version Redis gave it; the answer comes once each node has it (or did not
    answer in time: `partial`). Without Redis, no node's copy changes (503)."""
    assert node.cluster is not None
    copies = node.cluster.trusted_copies
    if not copies.fits(key, npc, data):
        raise _over_budget(node, key)
    try:
        version = await copies.save(key, npc, data)
    except ClockExhausted as exc:  # until an operator acts: a long retry_after
        log.error("the trusted context of %s was not saved: %s", key, exc)
        raise ApiError(503, "unavailable", str(exc), CLOCK_RETRY_AFTER) from None
    except Exception as exc:
        log.warning("the trusted context of %s was not saved in Redis: %s", key, exc)
        raise _unreachable() from None
    if version is None:  # the scope's other copies, as Redis has them, leave no room
        raise _over_budget(node, key)
    if not copies.set_nowait(key, npc, data, version):  # this node's copies grew meanwhile
        raise _over_budget(node, key)
    message: dict[str, Any] = {"k": "api", "op": "context", "scope": key, "npc": npc}
    message |= {"data": data, "v": version}
    gathered = await _everywhere(node, message)
    return {"ok": True, "scope": key, "npc": npc, **gathered.partial()}


async def _say() -> Response:
    """POST /api/say {npc, player | room, text?, event?} -> {turn}: a game-caused turn."""
    node = _node()
    body = await _body()
    npc = node.npcs[body.npc(node, required=True) or ""]
    audience = body.audience()
    text = body.string("text", required=False, max_chars=node.config.limits.text_chars) or ""
    event = body.string("event", required=False)
    body.done()
    if not text and event is None:
        raise ApiError(400, "invalid", "give 'text', 'event' or both")
    if node.draining:
        raise ApiError(503, "draining", "the server is draining", 1.0)
    if node.cluster is None:
        _check_present(node, audience)
        return _json(_game_say(node, npc.id, audience, text, event))
    unsure = await _check_present_everywhere(node, audience)
    return _json({**await cluster_say(node, npc.id, audience, text, event), **unsure.partial()})


async def cluster_say(
    node: Node, npc_id: str, audience: Audience, text: str, event: str | None
) -> dict[str, Any]:
    """A game say in a cluster, run by the node that runs (or claims) the conversation,
    in the order the says for it reached that node, this one included: its first say
    reads the audience's trusted context from Redis (that node may have started after
    the post), and the says meanwhile wait behind it. The player may be on any node
    (the caller checked that some node has them)."""
    assert node.cluster is not None
    here = node.find_conversation(npc_id, audience) is not None
    if here and not node.cluster.starting(npc_id, audience.key):
        return _game_say(node, npc_id, audience, text, event)
    try:
        owner = await node.cluster.leases.claim(npc_id, audience.key)
    except Exception:
        raise _unreachable() from None
    message = {"k": "api", "op": "say", "npc": npc_id, "audience": audience.key}
    return await _at(node, owner, {**message, "text": text, "event": event}, say_result)


def _game_say(
    node: Node, npc_id: str, audience: Audience, text: str, event: str | None
) -> dict[str, Any]:
    conversation = node.conversation(node.npcs[npc_id], audience)
    try:
        started = conversation.submit(
            audience.player or "", text, None, caused_by=GAME, event=event
        )
    except Refused as exc:
        node.forget_if_unused(conversation)
        raise ApiError(429, exc.code.value, exc.message, exc.retry_after) from None
    return {"turn": started.turn.id, "queued": started.queued}


def _game_interrupt(node: Node, turn_id: str) -> dict[str, Any]:
    entry = node.turns.get(turn_id)
    if entry is None:
        raise ApiError(404, "unknown_turn", f"'turn': no active turn {turn_id!r}")
    conversation, turn = entry
    conversation.interrupt(turn, None)
    return {"turn": turn.id, "interrupted": True, "kept": turn.kept}


async def _at(
    node: Node,
    owner: str,
    message: dict[str, Any],
    parse: Callable[[dict[str, Any]], dict[str, Any] | None],
) -> dict[str, Any]:
    """A game server's request run by the node that runs its conversation; its result,
    checked by `parse` as input (one that does not fit is that node's fault: 502)."""
    assert node.cluster is not None
    try:
        answer = await node.cluster.ask(owner, message)
    except TimeoutError:
        raise ApiError(503, "unavailable", f"node {owner} did not answer", 1.0) from None
    error = answer.get("error")
    if isinstance(error, dict):
        raise refusal(owner, error)
    result = answer.get("result")
    checked = parse(result) if isinstance(result, dict) else None
    if checked is None:
        raise ApiError(502, "unavailable", f"node {owner} answered something else")
    return checked


def refusal(owner: str, error: dict[str, Any]) -> ApiError:
    """The error another node answered, checked like input: a status that is not an HTTP
    error, or a retry that is not a number, is the other node's fault (502)."""
    status, code, text = error.get("status"), error.get("code"), error.get("message", "")
    if not (type(status) is int and 400 <= status <= 599 and isinstance(code, str)):
        return ApiError(502, "unavailable", f"node {owner} answered with a malformed error")
    retry = error.get("retry_after")
    if not isinstance(retry, int | float) or isinstance(retry, bool) or not 0 <= retry < 1e9:
        retry = None
    return ApiError(status, code, str(text), None if retry is None else float(retry))


def answer_forwarded(node: Node, message: Mapping[str, Any]) -> dict[str, Any]:
    """Run a game server request that another node forwarded (`_at`, or one of
    `_everywhere`); its answer. The message is validated as a request body is."""
    try:
        op = message.get("op")
        run = _FORWARDED.get(op) if isinstance(op, str) else None
        if run is None:
            raise ApiError(400, "invalid", f"no forwarded operation {op!r:.40}")
        return {"result": run(node, message)}
    except ApiError as exc:
        error = {"status": exc.status, "code": exc.code, "message": exc.message}
        return {"error": {**error, "retry_after": exc.retry_after}}


def _forwarded_say(node: Node, message: Mapping[str, Any]) -> dict[str, Any]:
    npc_id, key = message.get("npc"), message.get("audience")
    text, event = message.get("text"), message.get("event")
    if not (isinstance(npc_id, str) and npc_id in node.npcs and isinstance(key, str)):
        raise ApiError(400, "invalid", "a forwarded say names no NPC or audience")
    if not isinstance(text, str) or not (event is None or isinstance(event, str)):
        raise ApiError(400, "invalid", "a forwarded say has no text")
    audience = Audience.from_key(key)
    if audience is None:
        raise ApiError(400, "invalid", "a forwarded say's audience is not player:<id> or room:<id>")
    return _game_say(node, npc_id, audience, text, event)


def _forwarded_interrupt(node: Node, message: Mapping[str, Any]) -> dict[str, Any]:
    turn = message.get("turn")
    if not isinstance(turn, str):
        raise ApiError(400, "invalid", "a forwarded interrupt names no turn")
    return _game_interrupt(node, turn)


def _forwarded_kick(node: Node, message: Mapping[str, Any]) -> dict[str, Any]:
    body = Body({"player": message.get("player"), "ban": message.get("ban")})
    player, ban = body.player("player"), _ban_seconds(body)
    if ban:
        node.bans.note(player, ban)
    return _kick_here(node, player)


def _forwarded_unban(node: Node, message: Mapping[str, Any]) -> dict[str, Any]:
    player = Body({"player": message.get("player")}).player("player")
    return {"lifted": node.bans.forget(player)}


def _ban_seconds(body: Body) -> int:
    """`ban`: whole seconds the player stays refused after a kick (absent: 0, no ban)."""
    return body.seconds("ban", low=1, high=MAX_BAN_S, default=0)


def _forwarded_room(node: Node, message: Mapping[str, Any]) -> dict[str, Any]:
    room = Body({"room": message.get("room")}).room()
    if room is None:
        raise ApiError(400, "invalid", "a forwarded listing names no room")
    return {"members": list(node.hub.members(room)) if node.hub.room_exists(room) else []}


def _forwarded_player(node: Node, message: Mapping[str, Any]) -> dict[str, Any]:
    return _player_here(node, Body({"player": message.get("player")}).player("player"))


def _forwarded_context(node: Node, message: Mapping[str, Any]) -> dict[str, Any]:
    if node.cluster is None:
        raise ApiError(400, "invalid", "a forwarded context reached a node not in a cluster")
    copies = node.cluster.trusted_copies
    scope, npc, data = copies.check(message.get("scope"), message.get("npc"), message.get("data"))
    version = message.get("v")  # None from a node of an earlier release
    if version is not None and (type(version) is not int or not 1 <= version <= MAX_VERSION):
        expected = f"an integer from 1 to {MAX_VERSION}"
        raise ApiError(400, "invalid", f"a forwarded context's version must be {expected}")
    if not copies.set_nowait(scope, npc, data, version):
        raise _over_budget(node, scope)
    return {"ok": True}


_FORWARDED: dict[str, Callable[[Node, Mapping[str, Any]], dict[str, Any]]] = {
    "say": _forwarded_say,
    "interrupt": _forwarded_interrupt,
    "kick": _forwarded_kick,
    "unban": _forwarded_unban,
    "room": _forwarded_room,
    "player": _forwarded_player,
    "context": _forwarded_context,
}


async def _everywhere(node: Node, message: dict[str, Any]) -> Gathered:
    """`message` asked of every other live node; 503 if Redis cannot say which live."""
    assert node.cluster is not None
    try:
        return await gather(node.cluster, message)
    except Exception:
        raise _unreachable() from None


def _absent(node: Node, audience: Audience) -> ApiError | None:
    """Why a game say has nobody to reach on this node (None: it has)."""
    if audience.room is not None and not node.hub.room_exists(audience.room):
        return ApiError(404, "unknown_room", f"'room': no room {audience.room!r} has members")
    # A session held for a resume counts: the turn goes into it, and its resume gets it.
    if audience.player is not None and not node.hub.is_online(audience.player):
        message = f"'player': {audience.player!r} has no session (connected or held for a resume)"
        return ApiError(409, "not_connected", message)
    return None


def _check_present(node: Node, audience: Audience) -> None:
    absent = _absent(node, audience)
    if absent is not None:
        raise absent


async def _check_present_everywhere(node: Node, audience: Audience) -> Gathered:
    """`_check_present` over the cluster: this node, else every other live node (and for
    a player, the sessions a drained node parked in Redis). A node that does not answer
    may hold them, so the say goes ahead: what was gathered, for the answer's `partial`."""
    absent = _absent(node, audience)
    if absent is None:
        return Gathered()
    if audience.room is not None:
        gathered = await _everywhere(node, {"k": "api", "op": "room", "room": audience.room})
        if any(members for _, members in valid(gathered, member_list)) or gathered.missing:
            return gathered
        raise absent
    player = audience.player or ""
    gathered = await _everywhere(node, {"k": "api", "op": "player", "player": player})
    if any(part["sessions"] for _, part in valid(gathered, player_part)) or gathered.missing:
        return gathered
    try:
        parked = await node.handover.list_parked(player)
    except Exception:
        raise _unreachable() from None
    if parked:
        return gathered
    raise absent


async def _interrupt() -> Response:
    """POST /api/interrupt {turn}: stop a turn now (any turn: the game is trusted)."""
    node = _node()
    body = await _body()
    turn_id = body.string("turn", required=True)
    body.done()
    owner = node.cluster_owner_of(turn_id) if node.cluster is not None else None
    if owner is not None and owner != node.node_id:
        await _check_turn_node_alive(node, owner, turn_id)
        message = {"k": "api", "op": "interrupt", "turn": turn_id}
        return _json(await _at(node, owner, message, interrupt_result))
    return _json(_game_interrupt(node, turn_id))


async def _check_turn_node_alive(node: Node, owner: str, turn_id: str) -> None:
    """The node a turn's id names holds no turn once its lease is gone (it stopped, or
    never was): 404 at once, as for a turn that ended, not 503 after waiting for an
    answer that cannot come. 503 if Redis cannot say."""
    assert node.cluster is not None
    if not node.cluster.leases_trusted:
        return  # just after Redis came back a live node may lack its lease: ask it
    try:
        alive = await node.cluster.leases.alive(owner)
    except Exception:
        raise _unreachable() from None
    if not alive:
        raise ApiError(404, "unknown_turn", f"'turn': no active turn {turn_id!r}")


async def _kick() -> Response:
    """POST /api/kick {player, ban?}: close every socket of the player with 4508 (in a
    cluster: on every node, and the sessions a drained node parked in Redis, counted
    together); with `ban`, refuse the player's hellos for that many seconds too."""
    node = _node()
    body = await _body()
    player, ban = body.player("player"), _ban_seconds(body)
    body.done()
    if ban:  # before the sockets close: a reconnect that follows finds the ban
        try:
            await node.bans.ban(player, ban)
        except Exception:
            raise _unreachable() from None
    banned = {"banned_for": ban} if ban else {}
    here = _kick_here(node, player)
    if node.cluster is None:
        mine = {"sessions": here["sessions"], "sockets": here["sockets"]}
        return _json({"player": player, **mine, **banned})
    # Sessions a drained node left in Redis would resume without it: dropped before the
    # other nodes are asked (a resume meanwhile must not unpark one), and again after
    # (a node that parked while it was asked).
    parked = await _forget_parked(node, player)
    told = {"k": "api", "op": "kick", "player": player, **({"ban": ban} if ban else {})}
    gathered = await _everywhere(node, told)
    parked += await _forget_parked(node, player)
    counts = [here, *(c for _, c in valid(gathered, kick_counts))]
    sessions = merged_sessions(counts, parked)  # a session a node parked or unparked: once
    sockets = sum(c["sockets"] for c in counts)
    partial = gathered.partial()
    return _json({"player": player, "sessions": sessions, "sockets": sockets, **banned, **partial})


async def _unban() -> Response:
    """POST /api/unban {player} -> {player, lifted}: the player may say hello again (in a
    cluster: in Redis and on every live node); `lifted`: whether a ban was running."""
    node = _node()
    body = await _body()
    player = body.player("player")
    body.done()
    try:
        lifted = await node.bans.lift(player)
    except Exception:
        raise _unreachable() from None
    if node.cluster is None:
        return _json({"player": player, "lifted": lifted})
    gathered = await _everywhere(node, {"k": "api", "op": "unban", "player": player})
    return _json({"player": player, "lifted": lifted, **gathered.partial()})


async def _forget_parked(node: Node, player: str) -> list[str]:
    try:
        return await node.handover.forget_parked(player)
    except Exception:
        raise _unreachable() from None


def _kick_here(node: Node, player: str) -> dict[str, Any]:
    """Close the player's sockets here and end their sessions: `{sessions, sockets,
    ids}`, the ids those of the sessions (so that one on its way from another node,
    which both nodes count, is counted once)."""
    sessions = node.hub.sessions_of(player)
    sockets = sum(s.state is SessionState.ATTACHED for s in sessions)
    for session in sessions:
        node.end_session(session, CloseCode.KICKED)
    # Sessions on their way here from another node (a resume, a drain's hand-over).
    ids = sorted({s.id for s in sessions} | set(node.handover.kick_pending(player)))
    return {"sessions": len(ids), "sockets": sockets, "ids": ids}


async def _room(room: str) -> Response:
    """GET /api/rooms/<room> -> {room, members} (in a cluster: from every node)."""
    node = _node()
    room = Body({"room": room}).room()  # a name no join could have: 400, naming the rule
    if node.cluster is None:
        if not node.hub.room_exists(room):
            raise ApiError(404, "unknown_room", f"no room {room!r} has members")
        return _json({"room": room, "members": list(node.hub.members(room))})
    gathered = await _everywhere(node, {"k": "api", "op": "room", "room": room})
    members = list(node.hub.members(room)) if node.hub.room_exists(room) else []
    seen = set(members)  # a big room: one lookup per member, not a scan
    for _, theirs in valid(gathered, member_list):
        for member in theirs:
            if member not in seen:
                seen.add(member)
                members.append(member)
    if not members and not gathered.missing:
        raise ApiError(404, "unknown_room", f"no room {room!r} has members")
    return _json({"room": room, "members": members, **gathered.partial()})


async def _player(player: str) -> Response:
    """GET /api/players/<player> -> {player, online, sessions, rooms} (in a cluster: from
    every node, each session naming its node, and the sessions a drained node parked in
    Redis, with `state: "parked"` and `node: null`)."""
    node = _node()
    _utf8_path()
    player = Body({"player": player}).player("player")  # what no hello could have: 400
    here = _player_here(node, player)
    banned = {"banned_for": math.ceil(await node.bans.remaining_shared(player))}
    if node.cluster is None:
        return _json({"player": player, **here, **banned})
    gathered = await _everywhere(node, {"k": "api", "op": "player", "player": player})
    try:
        parked = await node.handover.list_parked(player)
    except Exception:
        raise _unreachable() from None
    sessions = [{**s, "node": node.node_id} for s in here["sessions"]]
    online, rooms = here["online"], set(here["rooms"])
    for origin, parsed in valid(gathered, player_part):
        sessions.extend({**s, "node": origin} for s in parsed["sessions"])
        online, rooms = online or parsed["online"], rooms | set(parsed["rooms"])
    listed = {s["session"] for s in sessions}  # a node that drained after it answered
    sessions += [{**s, "node": None} for s in parked if s["session"] not in listed]
    return _json(
        {
            "player": player,
            "online": online,
            "sessions": sessions,
            "rooms": sorted(rooms),
            **banned,
            **gathered.partial(),
        }
    )


def _utf8_path() -> None:
    """A path whose percent-escapes are not UTF-8 (`%ff`) is a 400: decoded, it would
    name the player U+FFFD instead."""
    try:
        unquote_to_bytes(request.scope.get("raw_path") or b"").decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid", "'player': the path's escapes are not UTF-8") from None


def _player_here(node: Node, player: str) -> dict[str, Any]:
    sessions = [
        {"session": s.id, "state": s.state.value, "last_seq": s.last_seq}
        for s in node.hub.sessions_of(player)
    ]
    return {
        "online": bool(node.attached_sessions(player)),
        "sessions": sessions,
        "rooms": sorted(node.hub.rooms_of(player)),
    }
