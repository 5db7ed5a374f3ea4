"""The `npc-server` command: serve (default) or print a token for local play."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from npc_server import __version__
from npc_server.app import InsecureSecret, resolve_secret
from npc_server.config import ConfigError, load_config, with_overrides
from npc_server.npcs import NpcConfigError
from npc_server.tokens import issue_token


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npc-server", description="Serve NPC conversations over WebSocket."
    )
    parser.add_argument("command", nargs="?", choices=["serve"], help="default: serve")
    parser.add_argument("--config", type=Path, help="server TOML (default: config/server.toml)")
    parser.add_argument("--host", help="address to listen on")
    parser.add_argument("--port", type=int, help="port to listen on (0: any free port)")
    parser.add_argument("--npcs", type=Path, help="directory of NPC TOML files")
    parser.add_argument(
        "--production", action="store_true", help="refuse to start without NPC_SERVER_SECRET"
    )
    parser.add_argument("--log-level", default=os.environ.get("NPC_SERVER_LOG_LEVEL", "INFO"))
    parser.add_argument("--version", action="version", version=f"npc-server {__version__}")
    return parser


def _token_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npc-server token", description="Print a signed player token."
    )
    parser.add_argument("player", help="player id (the token's sub)")
    parser.add_argument(
        "--ttl", type=float, default=3600.0, help="seconds until it expires (default 3600)"
    )
    parser.add_argument("--config", type=Path)
    return parser


def token_main(argv: Sequence[str]) -> int:
    args = _token_parser().parse_args(argv)
    config = load_config(args.config)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    print(issue_token(resolve_secret(config), args.player, args.ttl))
    return 0


def serve_main(argv: Sequence[str]) -> int:
    args = _serve_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = load_config(args.config)
    server: dict[str, object] = {}
    if args.host:
        server["host"] = args.host
    if args.port is not None:
        server["port"] = args.port
    if args.production:
        server["production"] = True
    config = with_overrides(config, server=server)
    if args.npcs:
        config = with_overrides(config, npcs_path=args.npcs)
    resolve_secret(config)  # fail early in production without a secret
    from npc_server.serve import run

    run(config)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["token"]:
            return token_main(argv[1:])
        return serve_main(argv)
    except (ConfigError, NpcConfigError, InsecureSecret) as exc:
        print(f"npc-server: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
