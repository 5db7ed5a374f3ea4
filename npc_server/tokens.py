"""Player tokens: HS256 JWTs whose `sub` is the player id and whose `exp` counts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

DEV_SECRET = "npc-server-development-secret-do-not-use-in-production"
MAX_PLAYER_CHARS = 128
# Claim times after 9999-12-31T23:59:59Z are not times but attacks on float().
MAX_SECONDS = 253_402_300_799


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
    expires_at = _seconds(claims, "exp")
    times = {name: _seconds(claims, name) for name in ("iat", "nbf") if name in claims}
    at = time.time() if now is None else now
    if expires_at <= at:
        raise TokenError("token expired", expired=True)
    if times.get("nbf", at) > at:
        raise TokenError("invalid token: not valid before its 'nbf'")
    if times.get("iat", at) > at:
        raise TokenError("invalid token: 'iat' is in the future")
    return TokenClaims(player=player, expires_at=expires_at)


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


def _player(sub: Any) -> str:
    if not isinstance(sub, str) or not 0 < len(sub) <= MAX_PLAYER_CHARS or not sub.isprintable():
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
