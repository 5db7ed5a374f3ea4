"""Tokens: HS256 JWTs whose `exp` counts.

A player token's `sub` is the player id. A watch token (`issue_watch_token`)
carries a `watch` claim listing the rooms it may watch over SSE; it is never
a player token, and a player token is never a watch token.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt

DEV_SECRET = "npc-server-development-secret-do-not-use-in-production"
MAX_PLAYER_CHARS = 128
# Claim times after 9999-12-31T23:59:59Z are not times but attacks on float().
MAX_SECONDS = 253_402_300_799
WATCH_CLAIM = "watch"
# How far ahead of this server's clock a token's `iat` and `nbf` may be: the game's
# backend that signs it runs on another host, whose clock may be a little ahead.
CLOCK_LEEWAY_S = 30.0
WATCH_SUBJECT = "watcher"


class TokenError(Exception):
    """A token was refused; `expired` tells 4002 apart from 4500."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.expired = expired


@dataclass(frozen=True, slots=True)
class TokenClaims:
    player: str
    expires_at: float


def issue_token(secret: str, player: str, ttl: float = 3600.0, now: float | None = None) -> str:
    """Sign a token for `player` valid for `ttl` seconds."""
    issued = time.time() if now is None else now
    claims = {"sub": player, "iat": int(issued), "exp": int(issued + ttl)}
    return jwt.encode(claims, secret, algorithm="HS256")


def verify_token(secret: str, token: str, now: float | None = None) -> TokenClaims:
    """Check signature and claims (`sub`, `exp`, `iat` and `nbf` if present); else `TokenError`."""
    claims = _signed_claims(secret, token)
    player = _player(claims.get("sub"))
    expires_at = _check_times(claims, now)
    if WATCH_CLAIM in claims:
        raise TokenError("invalid token: a watch token cannot open a player session")
    return TokenClaims(player=player, expires_at=expires_at)


def _check_times(claims: dict[str, Any], now: float | None) -> float:
    """Check `exp`, and `iat` and `nbf` when present (each may be up to CLOCK_LEEWAY_S
    ahead of this clock); returns `exp`."""
    expires_at = _seconds(claims, "exp")
    times = {name: _seconds(claims, name) for name in ("iat", "nbf") if name in claims}
    at = time.time() if now is None else now
    if expires_at <= at:
        raise TokenError("token expired", expired=True)
    ahead = at + CLOCK_LEEWAY_S
    if times.get("nbf", at) > ahead:
        raise TokenError("invalid token: not valid before its 'nbf'")
    if times.get("iat", at) > ahead:
        raise TokenError("invalid token: 'iat' is in the future")
    return expires_at


@dataclass(frozen=True, slots=True)
class WatchClaims:
    rooms: frozenset[str]
    expires_at: float


def issue_watch_token(
    secret: str, rooms: Sequence[str], ttl: float = 900.0, now: float | None = None
) -> str:
    """Sign a token that may watch `rooms` over SSE for `ttl` seconds."""
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": WATCH_SUBJECT, WATCH_CLAIM: list(rooms)}
    claims |= {"iat": int(issued), "exp": int(issued + ttl)}
    return jwt.encode(claims, secret, algorithm="HS256")


def verify_watch_token(secret: str, token: str, now: float | None = None) -> WatchClaims:
    """Check a watch token's signature, times and `watch` list of rooms; else `TokenError`."""
    claims = _signed_claims(secret, token)
    rooms = claims.get(WATCH_CLAIM)
    if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
        raise TokenError("invalid token: not a watch token (no 'watch' list of rooms)")
    expires_at = _check_times(claims, now)
    return WatchClaims(rooms=frozenset(rooms), expires_at=expires_at)


def _signed_claims(secret: str, token: str) -> dict[str, Any]:
    # Times are checked here, after their types: PyJWT takes "exp": "123" as a
    # number, and an `exp` too large for a float passed it and failed later.
    options: Any = {"require": ["sub", "exp"], "verify_exp": False}
    options |= {"verify_iat": False, "verify_nbf": False}
    try:
        claims: dict[str, Any] = jwt.decode(token, secret, algorithms=["HS256"], options=options)
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid token: {type(exc).__name__}") from None
    return claims


def is_player_id(player: str) -> bool:
    """Whether `player` may be a token's `sub`: what `hello` accepts (the API and the CLI
    refuse to sign anything else)."""
    return 0 < len(player) <= MAX_PLAYER_CHARS and player.isprintable()


def _player(sub: Any) -> str:
    if not isinstance(sub, str) or not is_player_id(sub):
        raise TokenError(
            f"invalid token: 'sub' must be a player id of 1-{MAX_PLAYER_CHARS} printable characters"
        )
    return sub


def _seconds(claims: dict[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(f"invalid token: '{name}' must be a number of seconds")
    if not 0 <= value <= MAX_SECONDS:  # NaN fails this too
        raise TokenError(f"invalid token: '{name}' must be between 0 and {MAX_SECONDS}")
    return float(value)
