"""Server configuration: `config/server.toml`, then `NPC_SERVER_*` variables.

Every key of a section can be set from the environment as
`NPC_SERVER_<SECTION>_<KEY>` (e.g. `NPC_SERVER_LIMITS_HEARTBEAT=5`);
`NPC_SERVER_HOST` and `NPC_SERVER_PORT` are short for the server section.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from npc_server.protocol.frames import Limits
from npc_server.session import SessionLimits

PACKAGE_ROOT = Path(__file__).resolve().parent
DEFAULT_CONFIG = PACKAGE_ROOT.parent / "config" / "server.toml"


class ConfigError(ValueError):
    """A configuration key is unknown or has a value of the wrong kind."""


@dataclass(frozen=True, slots=True)
class ServerSection:
    host: str = "127.0.0.1"
    port: int = 8700
    name: str = "npc-server"
    npcs_dir: str = "npcs"
    backlog: int = 2048
    # The kernel drops a connection whose sent data stays unacknowledged this
    # long, which frees sockets of peers that stopped reading (HYPERCORN-NOTES).
    # Keep it above write_timeout, so that the client is told 4000 first.
    tcp_user_timeout_ms: int = 15000
    # Caps kernel memory per socket, and keeps what a stalled reader's kernel
    # buffers hold well inside the replay window (so a resume loses nothing).
    send_buffer_bytes: int = 131072
    # Python's collector pauses cost the p99 of streaming (benchmarks); 0 keeps
    # Python's default threshold for generation 0.
    gc_threshold: int = 100_000
    use_uvloop: bool = True
    # permessage-deflate: costs CPU and ~100 KB per socket for tiny frames.
    websocket_compression: bool = False
    production: bool = False
    graceful_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class AuthSection:
    auth_timeout: float = 5.0
    expiry_grace: float = 2.0


# The protocol core's own defaults are the server's: one place to change them.
_PROTOCOL = Limits()


@dataclass(frozen=True, slots=True)
class LimitsSection:
    frame_bytes: int = _PROTOCOL.frame_bytes
    text_chars: int = _PROTOCOL.text_chars
    queue_frames: int = _PROTOCOL.queue_frames
    queue_bytes: int = _PROTOCOL.queue_bytes
    rate_per_s: float = _PROTOCOL.rate_per_s
    rate_burst: int = _PROTOCOL.rate_burst
    flood_close_after: int = _PROTOCOL.flood_close_after
    write_timeout: float = 10.0
    heartbeat: float = 15.0
    max_generations: int = 512
    turn_timeout: float = 120.0
    resume_window: float = 120.0
    replay_frames: int = 2048
    replay_bytes: int = 1024 * 1024
    hold_bytes: int = 1024 * 1024
    max_sockets_per_player: int = 4
    # New connections per second (and burst) per player and per client address;
    # past them the socket is closed with 4029.
    connects_per_s_player: float = 2.0
    connects_burst_player: int = 10
    connects_per_s_address: float = 50.0
    connects_burst_address: int = 200
    # "refuse" closes the newest socket with 4513; "replace" closes the oldest with 4503.
    sockets_policy: str = "refuse"
    room_members: int = 32
    rooms_per_player: int = 8
    # A fair share: turns one player may have queued or generating at once,
    # over private and room conversations; past it a say gets `busy`.
    turns_per_player: int = 4
    # Generated tokens per player per minute (what a hosted model costs); 0 is no budget.
    tokens_per_minute_player: int = 0
    # Bytes of stored `context` per player, over all NPCs (msgpack size).
    context_bytes_player: int = 32 * 1024

    def protocol_limits(self) -> Limits:
        return Limits(
            frame_bytes=self.frame_bytes,
            text_chars=self.text_chars,
            queue_frames=self.queue_frames,
            queue_bytes=self.queue_bytes,
            rate_per_s=self.rate_per_s,
            rate_burst=self.rate_burst,
            flood_close_after=self.flood_close_after,
        )

    def session_limits(self) -> SessionLimits:
        return SessionLimits(
            queue_frames=self.queue_frames,
            queue_bytes=self.queue_bytes,
            replay_frames=self.replay_frames,
            replay_bytes=self.replay_bytes,
            hold_bytes=self.hold_bytes,
            resume_window=self.resume_window,
        )


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerSection = field(default_factory=ServerSection)
    auth: AuthSection = field(default_factory=AuthSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    backend_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    backend_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    npcs_path: Path = PACKAGE_ROOT.parent / "config" / "npcs"
    secret: str | None = None


_SECTIONS = {"server": ServerSection, "auth": AuthSection, "limits": LimitsSection}


def _coerce(section: str, key: str, value: Any, kind: type) -> Any:
    where = f"[{section}] {key}"
    if isinstance(value, str) and kind is not str:
        try:
            if kind is bool:
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return kind(value)
        except ValueError:
            raise ConfigError(f"{where} must be {kind.__name__}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be {kind.__name__}, got {value!r}")
    return value


def _section(name: str, raw: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    cls = _SECTIONS[name]
    kinds = {f.name: type(getattr(cls(), f.name)) for f in fields(cls)}
    unknown = set(raw) - set(kinds)
    if unknown:
        raise ConfigError(f"[{name}] has unknown keys {sorted(unknown)}; known: {sorted(kinds)}")
    values = {k: _coerce(name, k, v, kinds[k]) for k, v in raw.items()}
    for key, kind in kinds.items():
        env_value = env.get(f"NPC_SERVER_{name.upper()}_{key.upper()}")
        if name == "server" and key in ("host", "port"):
            env_value = env.get(f"NPC_SERVER_{key.upper()}", env_value)
        if env_value is not None:
            values[key] = _coerce(name, key, env_value, kind)
    return cls(**values)


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any), then apply environment overrides."""
    env = os.environ if env is None else env
    path = path or Path(env.get("NPC_SERVER_CONFIG", DEFAULT_CONFIG))
    doc: dict[str, Any] = {}
    if path.exists():
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    known = {*_SECTIONS, "backends", "overrides"}
    unknown = set(doc) - known
    if unknown:
        raise ConfigError(f"{path}: unknown sections {sorted(unknown)}; known: {sorted(known)}")
    sections = {name: _section(name, doc.get(name, {}), env) for name in _SECTIONS}
    npcs_dir = Path(env.get("NPC_SERVER_NPCS_DIR", sections["server"].npcs_dir))
    if not npcs_dir.is_absolute():
        npcs_dir = path.parent / npcs_dir
    return Config(
        server=sections["server"],
        auth=sections["auth"],
        limits=sections["limits"],
        backend_defaults=doc.get("backends", {}),
        backend_overrides=doc.get("overrides", {}),
        npcs_path=npcs_dir,
        secret=env.get("NPC_SERVER_SECRET") or None,
    )


def with_overrides(config: Config, **sections: Mapping[str, Any]) -> Config:
    """A copy of `config` with some section keys replaced (used by tests and CLI flags)."""
    changes: dict[str, Any] = {}
    for name, values in sections.items():
        if name in ("backend_overrides", "backend_defaults"):
            changes[name] = values
        elif name in _SECTIONS:
            changes[name] = replace(getattr(config, name), **values)
        else:
            changes[name] = values
    return replace(config, **changes)
