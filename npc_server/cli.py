"""The `npc-server` command: serve (default), print a token, or write an editable config."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from npc_server import __version__, logs
from npc_server.app import InsecureSecret, check_metrics_guard, resolve_secret
from npc_server.config import Config, ConfigError, load_config, with_overrides
from npc_server.protocol.codec import _ROOM, ROOM_RULE
from npc_server.redaction import config_secrets
from npc_server.settings import LOG_LEVELS, MAX_WORKERS
from npc_server.tokens import MAX_PLAYER_CHARS, is_player_id, issue_token, issue_watch_token

# `npc-server token --ttl`: a test token may outlive the API's week, not reach the year
# 2255 where a JWT's `exp` stops being a time (nan, inf and negatives were tracebacks).
MAX_TOKEN_TTL_S = 10 * 365 * 86400.0

# Every subcommand, as `npc-server --help` lists them.
COMMANDS = {
    "serve": "serve NPC conversations over WebSocket (the default)",
    "token": "print a signed player token: npc-server token PLAYER",
    "init": "write an editable server.toml and the demo NPC files: npc-server init DIR",
}


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, got {text!r}")
    return int(text)


def _workers(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 1 to {MAX_WORKERS}, got {text!r}"
        )
    return int(text)


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npc-server",
        description="Serve NPC conversations over WebSocket.",
        epilog="commands:\n"
        + "".join(f"  {name:<8}{what}\n" for name, what in COMMANDS.items())
        + "`npc-server COMMAND --help` shows the options of each.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command", nargs="?", choices=list(COMMANDS), metavar="COMMAND", help="default: serve"
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="server TOML (default: NPC_SERVER_CONFIG, else the demo's, npc_server/demo/)",
    )
    parser.add_argument("--host", help="address to listen on")
    parser.add_argument("--port", type=_port, help="port to listen on (0: any free port)")
    parser.add_argument("--npcs", type=Path, help="directory of NPC TOML files")
    parser.add_argument(
        "--production",
        action="store_true",
        help="refuse to start without an NPC_SERVER_SECRET of at least 32 bytes, with an "
        "API key or webhook secret under 16 characters, or a [game] url without a webhook secret",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        help="server processes on this port (default: [server] workers); "
        "more than 1 needs [cluster] redis_url",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="default: NPC_SERVER_LOG_LEVEL, else [logging] level",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="text, or one JSON object per line (default: [logging] format)",
    )
    parser.add_argument("--version", action="version", version=f"npc-server {__version__}")
    return parser


def _token_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npc-server token", description="Print a signed player token."
    )
    parser.add_argument("player", nargs="?", help="player id (the token's sub)")
    parser.add_argument(
        "--watch",
        action="append",
        metavar="ROOM",
        help="a watch token for ROOM over SSE instead (repeat for several rooms)",
    )
    parser.add_argument(
        "--ttl",
        type=float,
        help="seconds until it expires (default 3600; [watch] token_ttl for --watch)",
    )
    parser.add_argument("--config", type=Path)
    return parser


def _init_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npc-server init",
        description="Write an editable server.toml and the demo NPC files (DIR/npcs/) into DIR.",
    )
    parser.add_argument("directory", type=Path, metavar="DIR", help="created when missing")
    parser.add_argument("--force", action="store_true", help="overwrite files that exist")
    return parser


def init_main(argv: Sequence[str]) -> int:
    args = _init_parser().parse_args(argv)
    from npc_server.scaffold import write_demo

    written = write_demo(args.directory, force=args.force)
    config = written[0]
    print(f"wrote {config} and {len(written) - 1} NPC files in {config.parent / 'npcs'}")
    print(f"serve them: npc-server --config {config}")
    return 0


def existing(path: Path, flag: str, *, directory: bool = False) -> Path:
    """`path` if it exists (as a directory when `directory`); otherwise a ConfigError."""
    if not (path.is_dir() if directory else path.is_file()):
        raise ConfigError(f"{flag} {path}: no such {'directory' if directory else 'file'}")
    return path


def token_main(argv: Sequence[str]) -> int:
    args = _token_parser().parse_args(argv)
    config = load_config(existing(args.config, "--config") if args.config else None)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if (args.player is None) == (args.watch is None):
        _token_parser().error("give a player id, or --watch ROOM (not both)")
    if args.ttl is not None and not 0 < args.ttl <= MAX_TOKEN_TTL_S:  # NaN fails too
        _token_parser().error(
            f"--ttl must be seconds above 0, at most {MAX_TOKEN_TTL_S:.0f}, got {args.ttl}"
        )
    if args.player is not None and not is_player_id(args.player):
        _token_parser().error(
            f"a player id is 1-{MAX_PLAYER_CHARS} printable characters, got {args.player!r}"
            " (hello would refuse the token)"
        )
    secret = resolve_secret(config)
    if args.watch is not None:
        bad = [room for room in args.watch if _ROOM.fullmatch(room) is None]
        if bad:
            _token_parser().error(f"--watch {bad[0]!r}: a room name is {ROOM_RULE}")
        ttl = config.watch.token_ttl if args.ttl is None else args.ttl
        print(issue_watch_token(secret, args.watch, ttl))
        return 0
    print(issue_token(secret, args.player, 3600.0 if args.ttl is None else args.ttl))
    return 0


def _log_level(args: argparse.Namespace, config: Config) -> str:
    """--log-level, else NPC_SERVER_LOG_LEVEL, else [logging] level."""
    if args.log_level:
        return str(args.log_level)
    level = os.environ.get("NPC_SERVER_LOG_LEVEL", "").upper()
    if not level:
        return config.logging.level
    if level not in LOG_LEVELS:
        raise ConfigError(
            f"environment variable NPC_SERVER_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, "
            f"got {level!r}"
        )
    return level


def configure_logging(args: argparse.Namespace, config: Config) -> None:
    """The log set-up of the command: flags win over the environment and [logging]."""
    logs.configure(
        format=args.log_format or config.logging.format,
        level=_log_level(args, config),
        levels=config.logging.levels,
        secrets=config_secrets(config),
    )


def serve_main(argv: Sequence[str]) -> int:
    args = _serve_parser().parse_args(argv)
    config = load_config(existing(args.config, "--config") if args.config else None)
    configure_logging(args, config)
    server: dict[str, object] = {}
    if args.host:
        server["host"] = args.host
    if args.port is not None:
        server["port"] = args.port
    if args.production:
        server["production"] = True
    if args.workers is not None:
        server["workers"] = args.workers
    config = with_overrides(config, server=server)
    if config.server.workers > 1 and not config.cluster.redis_url:
        raise ConfigError(
            f"--workers {config.server.workers} needs [cluster] redis_url (or "
            "NPC_SERVER_CLUSTER_REDIS_URL): workers share players through Redis"
        )
    if args.npcs:
        npcs = existing(args.npcs, "--npcs", directory=True)
        config = replace(config, npcs_path=npcs, npcs_origin="--npcs")
    # Fail early, in this process: with --workers, only the workers build the app, and a
    # refusal there was a restart loop, then an exit.
    resolve_secret(config, warn=False)  # fail early in production; create_app warns once
    check_metrics_guard(config, warn=False)
    from npc_server.serve import prepare, run
    from npc_server.workers import WORKER_FD, Supervisor

    # Every NPC file and backend is checked and built before the server listens.
    prepared = prepare(config)
    if config.server.workers > 1 and not os.environ.get(WORKER_FD):
        return Supervisor(config, argv).run()
    run(config, prepared)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["token"]:
            return token_main(argv[1:])
        if argv[:1] == ["init"]:
            return init_main(argv[1:])
        return serve_main(argv)
    except (ConfigError, InsecureSecret) as exc:
        print(f"npc-server: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
