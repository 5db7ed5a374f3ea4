"""When to renew a token: its JWT `exp` (and `iat`), read, never verified.

Checking the signature is the server's job; the client only needs to know
when the token runs out, so that it can send `refresh` with a new one before
the server closes the socket with 4002.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

# Refresh this long before `exp` at most, and never more than this part of the
# token's lifetime before it: a 3600 s token is renewed 60 s ahead, a 20 s one 5 s.
REFRESH_MARGIN = 60.0
REFRESH_FRACTION = 0.25


def token_claims(token: str) -> dict[str, Any] | None:
    """The JWT's payload, or None if `token` is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def _seconds(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def token_expiry(token: str) -> float | None:
    """The token's `exp` (seconds since the epoch), or None if it says nothing."""
    claims = token_claims(token)
    return None if claims is None else _seconds(claims, "exp")


def refresh_delay(token: str, now: float, margin: float = REFRESH_MARGIN) -> float | None:
    """Seconds from `now` until `token` should be renewed; None if it has no `exp`.

    The renewal is due `min(margin, REFRESH_FRACTION * lifetime)` before `exp`,
    the lifetime being `exp - iat` (or `exp - now` without `iat`).
    """
    claims = token_claims(token)
    expires = None if claims is None else _seconds(claims, "exp")
    if claims is None or expires is None:
        return None
    issued = _seconds(claims, "iat")
    lifetime = expires - (issued if issued is not None and issued < expires else now)
    ahead = min(margin, max(0.0, lifetime) * REFRESH_FRACTION)
    return max(0.0, expires - ahead - now)
