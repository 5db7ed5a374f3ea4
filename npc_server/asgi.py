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
from npc_server import logs
from npc_server.config import Config, ConfigError, load_config
from npc_server.hypercorn_fixes import install_fixes, set_websocket_compression
from npc_server.npcs import NpcConfigError
from npc_server.redaction import config_secrets
from npc_server.serve import prepare, tune_gc
from npc_server.settings import LOG_LEVELS

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
    """The npc-server app for an ASGI server, with what npc-server's own start-up applies:
    the same checks (`serve.prepare`), so an error names the same file and key."""
    ours = _configure_logging()
    config = config or load_config()
    if ours:  # now in the configured format, scrubbing the configured secrets
        logs.configure(
            format=config.logging.format,
            level=_level(config.logging.level),
            levels=config.logging.levels,
            secrets=config_secrets(config),
            hypercorn_startup=True,
        )
    install_fixes()
    set_websocket_compression(config.server.websocket_compression)
    prepared = prepare(config)
    tune_gc(config.server.gc_threshold)
    quart_app = app_module.create_app(config, prepared.npcs, backends=prepared.backends)
    log.warning(
        "served as an ASGI app (npc_server.asgi); not applied under plain Hypercorn:\n%s",
        "\n".join(f"  {setting}: {instead}" for setting, instead in NOT_APPLIED),
    )
    return quart_app


def _level(configured: str = "INFO") -> str:
    level = os.environ.get("NPC_SERVER_LOG_LEVEL", "").upper() or configured
    if level not in LOG_LEVELS:  # refused as npc-server refuses it (cli._log_level)
        raise ConfigError(
            f"environment variable NPC_SERVER_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, "
            f"got {level!r}"
        )
    return level


def _configure_logging() -> bool:
    """Our log lines, as npc-server writes them, unless the ASGI server's user set up
    logging (True: we did). Hypercorn configures only its own loggers; without this our
    lines came out bare, and with no scrubbing of tokens and secrets."""
    level = _level()
    if logging.getLogger().handlers:
        return False
    logs.configure(level=level, hypercorn_startup=True)
    return True


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
        """Build the app; on failure, the message to fail Hypercorn's start-up with."""
        try:
            self._app = create_app()
        except (ConfigError, NpcConfigError, app_module.InsecureSecret) as exc:
            if scope["type"] != "lifespan":
                raise
            return f"npc-server: {exc}"
        except Exception as exc:
            # Anything else is a bug or an error no check foresaw. Raised from a
            # lifespan call, Hypercorn would go on "without Lifespan support" and
            # answer every request empty: start-up stops instead (docs/deploy.md),
            # with the traceback in the log.
            if scope["type"] != "lifespan":
                raise
            log.exception("npc-server could not start")
            return f"npc-server: start-up failed: {type(exc).__name__}: {exc}"
        return None


app = LazyApp()
