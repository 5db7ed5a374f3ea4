"""Run the app on Hypercorn, on a listening socket the server makes itself.

Owning the socket lets us set `TCP_USER_TIMEOUT`, which accepted sockets
inherit: the kernel then drops a peer that stopped reading, which Hypercorn
alone never does (HYPERCORN-NOTES.md). SIGTERM/SIGINT drain before exiting.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any, cast

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

from npc_server.app import create_app, drain
from npc_server.backends import Backend, build_backends
from npc_server.config import Config, ConfigError
from npc_server.hypercorn_fixes import install_fixes, set_websocket_compression
from npc_server.metrics import AdminApp
from npc_server.node import Node
from npc_server.npcs import NpcConfig, load_npcs

log = logging.getLogger(__name__)

install_fixes()


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening socket's descriptor, handed over to Hypercorn (which closes it)."""

    fd: int
    host: str
    port: int


def make_listener(
    config: Config, host: str | None = None, port: int | None = None, where: str = ""
) -> Listener:
    """A bound, listening TCP socket with the kernel timeouts set ([server] host/port
    unless given; `where` names the setting in errors)."""
    server = config.server
    host = server.host if host is None else host
    port = server.port if port is None else port
    where = where or f"[server] host/port {host}:{port}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if server.tcp_user_timeout_ms > 0 and hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, server.tcp_user_timeout_ms)
    if server.send_buffer_bytes > 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, server.send_buffer_bytes)
    try:
        sock.bind((host, port))
        sock.listen(server.backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    host, port = sock.getsockname()[:2]
    return Listener(sock.detach(), host, port)


def admin_listener(config: Config) -> Listener | None:
    """The `[metrics] bind` socket, if metrics are on and have their own address."""
    bind = config.metrics.bind
    if not (config.metrics.enabled and bind):
        return None
    host, _, port = bind.rpartition(":")
    return make_listener(config, host.strip("[]"), int(port), f"[metrics] bind {bind}")


def admin_hypercorn_config(listener: Listener) -> HypercornConfig:
    hc = HypercornConfig()
    hc.bind = [f"fd://{listener.fd}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    return hc


def hypercorn_config(config: Config, listener: Listener) -> HypercornConfig:
    set_websocket_compression(config.server.websocket_compression)
    hc = HypercornConfig()
    hc.bind = [f"fd://{listener.fd}"]
    hc.backlog = config.server.backlog
    # Hypercorn closes oversized messages with 1009 before buffering them whole.
    hc.websocket_max_message_size = config.limits.frame_bytes
    hc.graceful_timeout = config.server.graceful_timeout
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")  # our handlers and format, once
    return hc


@dataclass(frozen=True, slots=True)
class Prepared:
    """What start-up checks and builds before the event loop runs."""

    npcs: dict[str, NpcConfig]
    backends: dict[str, Backend]


def say_line(text: str) -> None:
    """One line on stdout in one write: workers share the pipe, and print() writes the
    newline apart when stdout is unbuffered (PYTHONUNBUFFERED), so two workers' lines
    ran together and a reader counting lines missed a worker."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def prepare(config: Config) -> Prepared:
    """Load every NPC file and build every backend; a bad one raises, naming file and key.

    Done before the loop starts, so no player's first `say` waits for an import.
    """
    if config.cluster.redis_url:
        _check_redis(config.cluster.redis_url)
    npcs = load_npcs(config.npcs_path, config.npcs_origin)
    if not npcs:
        log.warning("no NPC files (*.toml) in %s", config.npcs_path)
    return Prepared(npcs, build_backends(npcs, config))


def _check_redis(url: str) -> None:
    from npc_server.brokers.redis import BrokerUnavailable, check_reachable

    try:
        check_reachable(url)
    except BrokerUnavailable as exc:
        raise ConfigError(f"[cluster] redis_url: {exc}") from None


async def serve(config: Config, prepared: Prepared) -> None:
    """Serve until SIGTERM or SIGINT, then drain and exit.

    A worker of `--workers` serves on the sockets its parent made and passed down.
    """
    from npc_server.workers import inherited_listeners

    app = create_app(config, prepared.npcs, backends=prepared.backends)
    node: Node = app.extensions["npc_server.node"]
    listener, admin = inherited_listeners()
    worker = listener is not None
    listener = listener or make_listener(config)
    admin = admin or (None if worker else admin_listener(config))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    draining: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        if not draining:
            log.info("signal received: draining")
            draining.append(loop.create_task(_drain_then_stop(node, config, stop)))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    npcs = ", ".join(sorted(node.npcs)) or "none"
    address = f"http://{listener.host}:{listener.port}"
    what = f"node {node.node_id}" if worker else "listening"
    say_line(f"npc-server {what} on {address} (WebSocket /ws, NPCs: {npcs})")
    servers = [hypercorn_serve(app, hypercorn_config(config, listener), shutdown_trigger=stop.wait)]
    if admin is not None:
        if not worker:
            say_line(f"npc-server metrics on http://{admin.host}:{admin.port}/metrics")
        admin_app = AdminApp(app.extensions["npc_server.metrics"])
        hc = admin_hypercorn_config(admin)
        servers.append(hypercorn_serve(cast(Any, admin_app), hc, shutdown_trigger=stop.wait))
    await asyncio.gather(*servers)


async def _drain_then_stop(node: Node, config: Config, stop: asyncio.Event) -> None:
    try:
        await drain(node, grace=config.server.graceful_timeout)
    finally:
        stop.set()


def tune_gc(threshold: int) -> None:
    """Freeze start-up objects and collect generation 0 less often.

    Measured (benchmarks/README.md): collector pauses of 45-80 ms set the p99
    delivery lag; with (100000, 50, 50) the 100 ms knee moved from ~400 to
    ~750 streaming players and CPU per token fell 10-15%.
    """
    if threshold > 0:
        gc.collect()
        gc.freeze()
        gc.set_threshold(threshold, 50, 50)


def run(config: Config, prepared: Prepared | None = None) -> None:
    """Run `serve` on uvloop when available and enabled (after `prepare`, if not given)."""
    prepared = prepared or prepare(config)
    tune_gc(config.server.gc_threshold)
    if config.server.use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(serve(config, prepared))
            return
    asyncio.run(serve(config, prepared))
