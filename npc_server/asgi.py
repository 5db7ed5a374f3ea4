"""ASGI entry point for those who run Hypercorn themselves.

    hypercorn 'npc_server.asgi:app'            # built on first use, in each worker
    hypercorn 'npc_server.asgi:create_app()'   # the same app, from a factory

Both read the configuration the way `npc-server` does (`NPC_SERVER_CONFIG`,
then `NPC_SERVER_*` variables) and install the Hypercorn fixes the socket edge
relies on. `npc-server` remains the better way to serve: it listens on a
socket it creates itself and drains on SIGTERM. What plain Hypercorn cannot
apply is in `NOT_APPLIED`, logged once at start and listed in docs/deploy.md.
"""

from __future__ import annotations

import logging
import os
from typing import Any, cast

from quart import Quart

from npc_server import app as app_module
from npc_server.config import Config, ConfigError, load_config
from npc_server.hypercorn_fixes import install_fixes, set_websocket_compression
from npc_server.npcs import NpcConfigError
from npc_server.serve import tune_gc

log = logging.getLogger(__name__)

# (setting, what to do instead under plain Hypercorn)
NOT_APPLIED: tuple[tuple[str, str], ...] = (
    ("[server] host, port", "use Hypercorn's --bind"),
    ("[server] backlog", "use Hypercorn's --backlog"),
    (
        "[server] tcp_user_timeout_ms",
        "needs our own listening socket; a peer that stops reading keeps its socket",
    ),
    ("[server] send_buffer_bytes", "needs our own listening socket; the kernel default applies"),
    (
        "[server] graceful_timeout and the drain on SIGTERM",
        "no `draining` frame: on SIGTERM sockets close with 1011, not 1001",
    ),
    ("[server] use_uvloop", "use Hypercorn's --worker-class uvloop"),
    (
        "[limits] frame_bytes before buffering",
        "set websocket_max_message_size in a Hypercorn config (deploy/hypercorn.toml)",
    ),
)

Receive = Any
Send = Any


def create_app(config: Config | None = None) -> Quart:
    """The npc-server app for an ASGI server, with what npc-server's own start-up applies."""
    _configure_logging()
    config = config or load_config()
    install_fixes()
    set_websocket_compression(config.server.websocket_compression)
    tune_gc(config.server.gc_threshold)
    quart_app = app_module.create_app(config)
    log.warning(
        "served as an ASGI app (npc_server.asgi); not applied under plain Hypercorn:\n%s",
        "\n".join(f"  {setting}: {instead}" for setting, instead in NOT_APPLIED),
    )
    return quart_app


def _configure_logging() -> None:
    # Hypercorn configures only its own loggers; without this our lines come
    # out bare (or not at all below WARNING).
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("NPC_SERVER_LOG_LEVEL", "INFO").upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )


class LazyApp:
    """An ASGI app that builds the real one on its first call.

    Importing this module (e.g. for `create_app()`) then builds nothing, and a
    bad configuration fails Hypercorn's start-up with its message instead of
    a traceback at import.
    """

    def __init__(self) -> None:
        self._app: Quart | None = None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if self._app is None:
            failure = self._build(scope)
            if failure is not None:
                await receive()  # lifespan.startup
                await send({"type": "lifespan.startup.failed", "message": failure})
                return
        assert self._app is not None
        await self._app(cast(Any, scope), receive, send)

    def _build(self, scope: dict[str, Any]) -> str | None:
        try:
            self._app = create_app()
        except (ConfigError, NpcConfigError, app_module.InsecureSecret) as exc:
            if scope["type"] != "lifespan":
                raise
            return f"npc-server: {exc}"
        return None


app = LazyApp()
