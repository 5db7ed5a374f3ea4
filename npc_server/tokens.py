"""Player tokens: HS256 JWTs whose `sub` is the player id and whose `exp` counts."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

DEV_SECRET = "npc-server-development-secret-do-not-use-in-production"


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


def verify_token(secret: str, token: str) -> TokenClaims:
    """Check signature, `sub` and `exp`; raise `TokenError` otherwise."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=["HS256"], options={"require": ["sub", "exp"]}
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired", expired=True) from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid token: {type(exc).__name__}") from None
    player = claims["sub"]
    if not isinstance(player, str) or not player or len(player) > 128:
        raise TokenError("invalid token: 'sub' must be a player id string")
    return TokenClaims(player=player, expires_at=float(claims["exp"]))
