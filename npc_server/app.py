"""The Quart application: `/ws`, `/watch`, `/ops/events`, `/healthz`, `/readyz` and the `/play` page."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
from quart import Quart, Response, jsonify, request

from npc_server import __version__
from npc_server.api import api_blueprint
from npc_server.api_schema import ApiError, refuse_repeated_keys
from npc_server.backends import Backend
from npc_server.config import PACKAGE_ROOT, Config, ConfigError
from npc_server.forwarded import ForwardedFor
from npc_server.logs import EventLog
from npc_server.metrics import NodeMetrics
from npc_server.node import Node
from npc_server.npcs import NpcConfig, load_npcs
from npc_server.ops import RETRY_AFTER_S, ApiKeyGate, KeyCheck, OpsService
from npc_server.pages import Pages
from npc_server.protocol.codec import _ROOM, ROOM_RULE
from npc_server.protocol.codes import CloseCode
from npc_server.tokens import (
    DEV_SECRET,
    MAX_PLAYER_CHARS,
    is_player_id,
    issue_token,
    issue_watch_token,
)
from npc_server.transports.websocket import NpcWebsocketConnection
from npc_server.watch import WatchRequest, WatchService

log = logging.getLogger(__name__)

WEB_DIR = PACKAGE_ROOT / "web"
SWEEP_INTERVAL = 5.0
CLOSE_WAIT = 3.0
# The app's shutdown has 60 s in all (Hypercorn's `shutdown_timeout`): the last webhooks
# (of turns the stop cuts) wait at most this share of it, whatever is left of the grace.
FINAL_FLUSH_MAX = 30.0


class InsecureSecret(RuntimeError):
    """`--production` was asked for without `NPC_SERVER_SECRET`."""


# HS256 wants a key at least as long as its hash; a shorter secret can be guessed offline.
MIN_SECRET_BYTES = 32


def resolve_secret(config: Config, *, warn: bool = True) -> str:
    """The token secret; the development one only outside production (said once, if `warn`).

    Production refuses a missing secret and one shorter than MIN_SECRET_BYTES,
    whichever entry point starts the server (the command or plain Hypercorn).
    """
    if config.secret:
        length = len(config.secret.encode())
        if config.server.production and length < MIN_SECRET_BYTES:
            raise InsecureSecret(
                f"NPC_SERVER_SECRET is {length} bytes; production needs at least "
                f"{MIN_SECRET_BYTES} random bytes (e.g. openssl rand -hex 32)"
            )
        return config.secret
    if config.server.production:
        raise InsecureSecret("production mode needs NPC_SERVER_SECRET to be set")
    if warn:
        log.warning(
            "DEVELOPMENT MODE: NPC_SERVER_SECRET is not set; tokens use a public dev secret"
        )
    return DEV_SECRET


def check_metrics_guard(config: Config, *, warn: bool = True) -> None:
    """Refuse an open /metrics in production; say so outside it (`warn`: the CLI checks
    before the server starts, and the app warns once)."""
    metrics = config.metrics
    if not metrics.enabled or metrics.bind or config.api_key:
        return
    if config.server.production:
        raise ConfigError(
            "[metrics] enabled on the main port needs NPC_SERVER_API_KEY in production "
            "(or set [metrics] bind to serve it on its own address)"
        )
    if warn:
        log.warning("/metrics is open to anyone: set NPC_SERVER_API_KEY or [metrics] bind")


def create_app(
    config: Config,
    npcs: dict[str, NpcConfig] | None = None,
    node: Node | None = None,
    backends: Mapping[str, Backend] | None = None,
) -> Quart:
    """Build the app; the node holds all server state (and `backends`, built at start-up)."""
    app = Quart(__name__)
    # Before any route: werkzeug would answer `/play//x?token=T` with a 308 to
    # `http://<the Host header>/play/x?token=T` (a redirect the client names, the token
    # repeated), and `/api//kick` so before the key check. Unmerged, they are 404s.
    app.url_map.merge_slashes = False
    app.asgi_websocket_class = NpcWebsocketConnection
    if config.server.trusted_proxy_hops:  # the client's address from X-Forwarded-For
        hops, proxies = config.server.trusted_proxy_hops, config.server.trusted_proxies
        app.asgi_app = ForwardedFor(app.asgi_app, hops, proxies)  # type: ignore[method-assign,assignment]
    if node is None:
        npcs = npcs if npcs is not None else load_npcs(config.npcs_path)
        node = Node(config, npcs, backends=backends)
    app.extensions["npc_server.node"] = node
    app.extensions["npc_server.secret"] = secret = resolve_secret(config)
    if config.game.url and not config.webhook_secret:
        log.warning(
            "[game] url is set without NPC_SERVER_WEBHOOK_SECRET: webhooks and tool calls "
            "to the game server go unsigned"
        )
    node.events.subscribe(EventLog())
    gate = ApiKeyGate(node, config.api_key) if config.api_key else None
    metrics = _wire_metrics(app, config, node, gate)
    app.register_blueprint(api_blueprint(gate))
    watch = app.extensions["npc_server.watch"] = WatchService(node, secret)
    ops = OpsService(node, gate)
    sweeper: list[asyncio.Task[None]] = []

    @app.before_serving
    async def start_sweeper() -> None:
        await node.start()
        node.socket_claims.start()
        node.webhooks.start()
        sweeper.append(asyncio.create_task(_sweep(node, watch), name="session-sweeper"))
        sweeper.append(asyncio.create_task(_watch(node), name="socket-watchdog"))
        if metrics is not None and metrics.multiprocess:
            sweeper.append(asyncio.create_task(metrics.sample_forever(), name="metrics-sampler"))

    @app.after_serving
    async def shutdown() -> None:
        for task in sweeper:
            task.cancel()
        for conversation in node.all_conversations():
            await conversation.aclose()
        _expire_waiting(node)  # the actions of turns the stop cut: queued before the flush
        for backend in node.backends.values():
            await backend.aclose()
        await node.webhooks.aclose(at_most=FINAL_FLUSH_MAX)
        await node.socket_claims.aclose()
        await node.aclose()

    @app.get("/healthz")
    async def healthz() -> Response:
        stats = node.statistics()
        body: dict[str, Any] = {
            "status": node.health,
            "version": __version__,
            "node": node.node_id,
            "npcs": sorted(node.npcs),
            "sockets": len(node.sockets),
            **asdict(stats),
            "webhooks": asdict(node.webhooks.statistics()),
            "tools": asdict(node.tools.statistics()),
            "cluster": {
                "redis": bool(config.cluster.redis_url),
                "available": node.broker.available,
                "handover": node.handover.statistics(),
                "sockets": asdict(node.socket_claims.statistics()),
                "routing": node.cluster.statistics() if node.cluster is not None else None,
                "broker": _broker_statistics(node.broker),
            },
        }
        return jsonify(body)

    @app.get("/readyz")
    async def readyz() -> tuple[Response, int]:
        # For a balancer's or an orchestrator's readiness check: 503 while draining,
        # so no new player is sent here; /healthz stays 200 (the process is alive).
        code, status = node.readiness
        return jsonify({"status": status}), code

    @app.get("/npcs")
    async def list_npcs() -> Response:
        return jsonify(
            [{"id": n.id, "name": n.name, "greeting": n.greeting} for n in node.npcs.values()]
        )

    @app.post("/dev/token")
    async def dev_token() -> Response | tuple[str, int]:
        # Only without a configured secret: lets the /play page start at once locally.
        if config.secret:
            return "not found", 404
        body = await _dev_body()
        if isinstance(body, str):
            return body, 400
        player = body.get("player")
        if not isinstance(player, str) or not is_player_id(player):  # what hello accepts
            return f"player must be a name of 1 to {MAX_PLAYER_CHARS} printable characters", 400
        return _no_store(jsonify({"token": issue_token(DEV_SECRET, player, 3600.0), "dev": True}))

    @app.post("/dev/watch-token")
    async def dev_watch_token() -> Response | tuple[str, int]:
        # Only without a configured secret: lets /play's "watch this room" link open at once.
        if config.secret:
            return "not found", 404
        body = await _dev_body()
        if isinstance(body, str):
            return body, 400
        room = body.get("room")
        if not isinstance(room, str) or _ROOM.fullmatch(room) is None:
            return f"room must be a room name: {ROOM_RULE}", 400
        token = issue_watch_token(DEV_SECRET, [room], config.watch.token_ttl)
        return _no_store(jsonify({"token": token, "dev": True}))

    @app.get("/watch")
    async def watch_room() -> Response:
        # The token is in the URL (EventSource sets no headers): never log the query.
        ask = WatchRequest(
            room=request.args.get("room"),
            token=request.args.get("token"),
            last_event_id=request.headers.get("Last-Event-ID") or request.args.get("last_id"),
            address=request.remote_addr or "unknown",
        )
        return await watch.open(ask)

    @app.get("/ops/events")
    async def ops_events() -> Response:
        return ops.open(request.headers.get("Authorization"), request.remote_addr or "unknown")

    pages = Pages(WEB_DIR)

    @app.get("/play")
    @app.get("/play/")
    async def play() -> Response:
        return _page_headers(await pages.respond("index.html"))

    @app.get("/play/<path:name>")
    async def play_asset(name: str) -> Response:
        return _page_headers(await pages.respond(name))

    return app


def _wire_metrics(
    app: Quart, config: Config, node: Node, gate: ApiKeyGate | None
) -> NodeMetrics | None:
    """Listen for metrics if enabled; `/metrics` on this app unless on its own bind
    (behind `gate`, the API key's, when one is configured)."""
    check_metrics_guard(config)
    if not config.metrics.enabled:
        return None
    metrics = NodeMetrics(node)
    node.events.subscribe(metrics)
    app.extensions["npc_server.metrics"] = metrics
    if config.metrics.bind:
        return metrics  # served by serve.py on the admin listener alone

    @app.get("/metrics")
    async def scrape() -> Response | tuple[str, int, dict[str, str]]:
        if gate is not None:
            address = request.remote_addr or "unknown"
            verdict = gate.check(request.headers.get("Authorization"), address)
            if verdict is KeyCheck.LIMITED:
                retry = {"Retry-After": str(RETRY_AFTER_S)}
                return "too many requests with a wrong key from this address", 429, retry
            if verdict is KeyCheck.WRONG:
                return "a bearer API key is required", 401, {"WWW-Authenticate": "Bearer"}
        body, content_type = metrics.exposition()
        return Response(body, content_type=content_type)

    return metrics


async def _watch(node: Node) -> None:
    # One task for every socket's timers, instead of a task and a timer per socket.
    interval = node.watch_interval()
    while True:
        await asyncio.sleep(interval)
        node.tick_sockets()


async def _sweep(node: Node, watch: WatchService) -> None:
    while True:
        await asyncio.sleep(SWEEP_INTERVAL)
        node.expire_sessions()
        watch.sweep_nowait()


async def drain(node: Node, grace: float, retry_after: float = 1.0) -> None:
    """Tell every socket to go elsewhere, let turns finish for `grace`, expire the actions
    waiting for approval, close 1001, and let webhooks go out for what is left of `grace`."""
    node.draining = True
    node.webhooks.stop_within(grace)  # one grace: the turns', then the webhooks' rest of it
    node.announce_drain(retry_after)
    generating = node.turns.tasks()
    if generating:
        await asyncio.wait(generating, timeout=grace)
    _expire_waiting(node)
    sockets = list(node.sockets)
    for socket in sockets:
        socket.request_close(CloseCode.GOING_AWAY, "server draining")
    closed = [asyncio.ensure_future(socket.finished.wait()) for socket in sockets]
    if closed:
        await asyncio.wait(closed, timeout=CLOSE_WAIT)
        for waiter in closed:
            waiter.cancel()
    await _park_sessions(node)
    await node.webhooks.flush()


def _expire_waiting(node: Node) -> None:
    # An action belongs to the node that made it (its id names the node): none takes it
    # over, even with its session, so once this node stops nobody can answer it. It ends
    # now: its `action.end` before the 1001, its webhook before the queue's last flush.
    expired = node.turns.expire_waiting_nowait()
    if expired:
        log.info("%d actions waiting for approval expired: the server stops", expired)


async def _park_sessions(node: Node) -> None:
    # Sessions still held when this node exits go to live nodes, which go on receiving
    # their frames; what none took waits in Redis for its resume elsewhere.
    try:
        taken = await node.handover.hand_over_all()
    except Exception as exc:
        log.warning("could not hand the sessions still held to other nodes: %s", exc)
        taken = 0
    if taken:
        log.info("handed %d sessions to other nodes", taken)
    try:
        async with asyncio.timeout(CLOSE_WAIT):
            parked = await node.handover.park_all()
    except Exception as exc:
        log.warning("could not park the sessions still held: %s", exc)
        return
    if parked:
        log.info("parked %d sessions in Redis for a resume on another node", parked)


async def _dev_body() -> dict[str, Any] | str:
    """A /dev/ endpoint's JSON object, or {} for anything else (bytes that are not UTF-8,
    JSON nested past the parser, not an object): those answer 400 by what is missing.
    A key given twice is the message refusing it (400): which one counts is up to
    the parser, as in `/api/`."""
    data = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    try:
        refuse_repeated_keys(data)
    except ApiError as exc:
        return exc.message
    return doc if isinstance(doc, dict) else {}


def _no_store(response: Response) -> Response:
    """A token in the answer: no cache, the browser's or one on the way, keeps a copy."""
    response.headers["Cache-Control"] = "no-store"
    return response


def _page_headers(response: Response) -> Response:
    """The pages take a token in their URL (`?token=`): a request they make must not
    carry it on in its Referer header (to access logs, to other sites), and no other
    site may frame them (a click-jacker would drive a player's session)."""
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
    return response


def web_dir() -> Path:
    return WEB_DIR


def _broker_statistics(broker: Any) -> dict[str, Any] | None:
    """The Redis broker's counts (publications sent, received, kept on this node...)."""
    statistics = getattr(broker, "redis_statistics", None)
    return asdict(statistics()) if statistics is not None else None
