"""What can be set: the sections of `server.toml`, their defaults, and the range of each.

`config.py` reads a file and the environment into these; `RULES` says what
every value must satisfy, in one place (a new field needs a rule:
tests/test_config.py checks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from npc_server.forwarded import MAX_HOPS, networks
from npc_server.protocol.codec import _ROOM, ROOM_RULE
from npc_server.protocol.frames import Limits
from npc_server.redaction import redacted_url
from npc_server.session import SessionLimits


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
    # Server processes on one port (--workers); more than one needs [cluster] redis_url.
    workers: int = 1
    # Behind proxies: how many of them append to X-Forwarded-For (npc_server/forwarded.py);
    # 0 reads no header. Only connections from `trusted_proxies` (addresses or networks)
    # are believed: any other peer keeps its own address.
    trusted_proxy_hops: int = 0
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class ClusterSection:
    # "" : one process, state in memory. redis://host:port/db : nodes share through Redis.
    redis_url: str = ""
    # Seconds an NPC remembers an audience after the last turn (30 days); the memory
    # is in Redis with redis_url, in the process without (npc_server/memories/).
    memory_ttl: float = 2_592_000.0


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
    context_keys: int = _PROTOCOL.context_keys
    context_bytes: int = _PROTOCOL.context_bytes
    max_delta_ms: int = _PROTOCOL.max_delta_ms
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
            context_keys=self.context_keys,
            context_bytes=self.context_bytes,
            max_delta_ms=self.max_delta_ms,
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


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True, slots=True)
class LoggingSection:
    format: str = "text"
    level: str = "INFO"
    # Per logger, e.g. {"npc_server.turns" = "WARNING", "hypercorn" = "ERROR"}.
    levels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MetricsSection:
    # Off: /metrics answers 404. On: behind NPC_SERVER_API_KEY on the main port,
    # or on its own `bind` ("host:port"), which serves only /metrics and /healthz.
    enabled: bool = False
    bind: str = ""
    # With PROMETHEUS_MULTIPROC_DIR (several workers): how often each worker
    # writes its gauges for the others' scrapes.
    sample_interval: float = 5.0


@dataclass(frozen=True, slots=True)
class GameSection:
    """The game's own server: where webhooks and tool calls go (docs/game-server.md)."""

    # "" means no game server: no webhooks, game tools answer with their fallback.
    url: str = ""
    webhook_timeout_s: float = 5.0
    webhook_retries: int = 5
    webhook_backoff_s: float = 0.5
    webhook_backoff_max_s: float = 30.0
    webhook_queue: int = 1000
    webhook_workers: int = 4
    tool_timeout_s: float = 5.0
    tool_result_chars: int = 2000


@dataclass(frozen=True, slots=True)
class WatchSection:
    """Watching rooms over server-sent events (`GET /watch`)."""

    # Rooms anyone may watch without a token.
    public_rooms: tuple[str, ...] = ()
    watchers_per_room: int = 1000
    watchers_per_address: int = 20
    # Seconds between keep-alive comments on an idle stream.
    keepalive: float = 15.0
    # Events of a room kept for a reconnect with Last-Event-ID.
    replay_events: int = 1024
    # Default lifetime of `npc-server token --watch` tokens, in seconds.
    token_ttl: float = 900.0


def _nothing(value: Any) -> str:
    return ""


@dataclass(frozen=True, slots=True)
class Rule:
    """What a setting's value must satisfy, and how to say so."""

    ok: Callable[[Any], bool]
    expected: str
    # What is wrong with a refused value beyond `expected` ("": nothing to add).
    why: Callable[[Any], str] = _nothing
    # How a refused value is shown: a URL's password never is (the message goes to stderr).
    shown: Callable[[Any], str] = repr


# Upper bounds: a value the rules let through must also be one the server can use,
# or it passes the check and fails later, as a traceback or a close 1011 per hello.
# Counts and sizes: exact as a double (how a JavaScript client reads a number) and
# inside msgpack's 64-bit integers, in which welcome.limits is sent.
MAX_COUNT = 2**53
# What listen(), setsockopt() and gc.set_threshold() take: a C int.
MAX_C_INT = 2**31 - 1
# Seconds: about 31 years, past any timer worth setting and far inside what Redis
# takes as PX milliseconds (memory, parked sessions) and a token's exp.
MAX_SECONDS = 10**9


def positive(high: int, what: str = "") -> Rule:
    """Greater than 0 and at most `high`; `what` says why that bound."""
    return Rule(lambda v: 0 < v <= high, f"greater than 0 and at most {high}{what}")


def non_negative(high: int, what: str = "") -> Rule:
    """0 or more and at most `high`; `what` says why that bound."""
    return Rule(lambda v: 0 <= v <= high, f"0 or more and at most {high}{what}")


POSITIVE = positive(MAX_COUNT, " (2**53)")
NON_NEGATIVE = non_negative(MAX_COUNT, " (2**53)")
SECONDS = positive(MAX_SECONDS, " seconds (about 31 years)")
SECONDS_OR_ZERO = non_negative(MAX_SECONDS, " seconds (about 31 years)")
C_INT_POSITIVE = positive(MAX_C_INT, " (2**31 - 1, a C int)")
C_INT_OR_ZERO = non_negative(MAX_C_INT, " (2**31 - 1, a C int)")
# Each worker is a process, each webhook worker a task: thousands are a typo.
MAX_WORKERS = 1024
# webhook_backoff_s doubles per retry: 2**1024 is no longer a float.
MAX_RETRIES = 1000
NON_EMPTY = Rule(lambda v: bool(v.strip()), "a non-empty string")
ANY = Rule(lambda v: True, "any value")
PORT = Rule(lambda v: 0 <= v <= 65535, "a port from 0 (any free port) to 65535")


def _without_password(url: str) -> str:
    return repr(redacted_url(url))


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def redis_url_problem(url: str) -> str:
    """Why redis-py refuses `url` ("": it does not), found without connecting (see
    `brokers/redis.url_problem`); nothing to say without redis-py installed: start-up
    says how to install it."""
    try:
        from npc_server.brokers.redis import url_problem
    except ImportError:
        return ""
    return url_problem(url)


REDIS_URL = Rule(
    lambda v: v == "" or (v.startswith(REDIS_SCHEMES) and not redis_url_problem(v)),
    'a redis://, rediss:// or unix:// URL redis-py accepts, or "" for one process without Redis',
    why=lambda v: redis_url_problem(v) if v.startswith(REDIS_SCHEMES) else "",
    shown=_without_password,
)


def _game_url_problem(url: str) -> str:
    # What the game's HTTP client refuses (a port out of range or 0, an unclosed
    # `[`, no host): each delivery failed, counted, until someone read the log.
    from npc_server.game_http import url_problem

    return url_problem(url)


HTTP_URL = Rule(
    lambda v: (
        v == ""
        or (
            v.startswith(("http://", "https://"))
            and not v.endswith("/")
            and not _game_url_problem(v)
        )
    ),
    'an http(s) URL without a trailing slash, or "" for none',
    why=lambda v: _game_url_problem(v) if v else "",
    shown=_without_password,
)


def _room_names(value: tuple[str, ...]) -> bool:
    # The protocol's own room rule, so a public room is one a player can join.
    return all(_ROOM.fullmatch(room) is not None for room in value)


ROOM_NAMES = Rule(_room_names, f"a list of room names ({ROOM_RULE})")


def _networks(value: tuple[str, ...]) -> bool:
    try:
        networks(value)
    except ValueError:
        return False
    return True


NETWORKS = Rule(_networks, 'a list of IP addresses or networks ("10.0.0.5", "10.0.0.0/8")')


def one_of(*values: str) -> Rule:
    return Rule(lambda v: v in values, "one of " + ", ".join(repr(v) for v in values))


LEVEL = Rule(lambda v: v.upper() in LOG_LEVELS, "one of " + ", ".join(LOG_LEVELS))
LEVELS = Rule(
    lambda v: all(k and isinstance(x, str) and x.upper() in LOG_LEVELS for k, x in v.items()),
    "a table of logger names to levels (" + ", ".join(LOG_LEVELS) + ")",
)


def _is_bind(value: str) -> bool:
    host, _, port = value.rpartition(":")
    return value == "" or (bool(host) and port.isascii() and port.isdigit() and int(port) <= 65535)


BIND = Rule(_is_bind, '"" (none) or "host:port" (port 0: any free port)')


# The range of every setting, in one place: a new field needs a rule here
# (tests/test_config.py checks), from the file and the environment alike.
RULES: Mapping[str, Mapping[str, Rule]] = {
    "server": {
        "host": NON_EMPTY,
        "port": PORT,
        "name": NON_EMPTY,
        "npcs_dir": NON_EMPTY,
        "backlog": C_INT_POSITIVE,
        "tcp_user_timeout_ms": C_INT_OR_ZERO,  # 0: the kernel's default
        "send_buffer_bytes": C_INT_OR_ZERO,  # 0: the kernel's default
        "gc_threshold": C_INT_OR_ZERO,  # 0: Python's default
        "use_uvloop": ANY,
        "websocket_compression": ANY,
        "production": ANY,
        "graceful_timeout": SECONDS_OR_ZERO,
        "workers": positive(MAX_WORKERS),
        "trusted_proxy_hops": non_negative(MAX_HOPS),
        "trusted_proxies": NETWORKS,
    },
    "auth": {"auth_timeout": SECONDS, "expiry_grace": SECONDS_OR_ZERO},
    "limits": {
        **{f.name: POSITIVE for f in fields(LimitsSection)},
        "write_timeout": SECONDS,
        "heartbeat": SECONDS,
        "turn_timeout": SECONDS,
        "resume_window": SECONDS_OR_ZERO,  # 0: a dropped socket's session ends at once
        "tokens_per_minute_player": NON_NEGATIVE,  # 0: no budget
        "max_delta_ms": NON_NEGATIVE,  # 0: clients may not ask for paced deltas
        "sockets_policy": one_of("refuse", "replace"),
    },
    "logging": {"format": one_of("text", "json"), "level": LEVEL, "levels": LEVELS},
    "metrics": {"enabled": ANY, "bind": BIND, "sample_interval": SECONDS},
    "game": {
        **{f.name: POSITIVE for f in fields(GameSection)},
        "url": HTTP_URL,
        "webhook_timeout_s": SECONDS,
        "webhook_retries": non_negative(MAX_RETRIES),  # 0: one attempt only
        "webhook_backoff_s": SECONDS,
        "webhook_backoff_max_s": SECONDS,
        "webhook_workers": positive(MAX_WORKERS),
        "tool_timeout_s": SECONDS,
    },
    "watch": {
        "public_rooms": ROOM_NAMES,
        "watchers_per_room": POSITIVE,
        "watchers_per_address": POSITIVE,
        "keepalive": SECONDS,
        "replay_events": POSITIVE,
        "token_ttl": SECONDS,
    },
    "cluster": {"redis_url": REDIS_URL, "memory_ttl": SECONDS},
}
