"""What a model server's failures mean: error bodies as the SDK read them, and retries.

No I/O: `openai.py` turns these into player-safe errors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from npc_server.backends.http_connection import ConnectFailed, ConnectTimedOut, TransportError

BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 4.0


class UpstreamStatus(Exception):
    """The model server answered with an error status (or a redirect, which is not followed)."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str], body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.reason = reason
        self.headers = headers
        self.error = error_body(body)


def error_body(body: bytes) -> object:
    """An error body as the SDK reads it: JSON with its `error` unwrapped, else the text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested past Python's stack
        return text
    return data.get("error", data) if isinstance(data, Mapping) else data


def upstream_message(body: object) -> str:
    """The `message` of an OpenAI-style error body (already unwrapped from `error`)."""
    if isinstance(body, Mapping):
        message = body.get("message", body.get("error", ""))
        return message if isinstance(message, str) else json.dumps(message, default=str)
    return body if isinstance(body, str) else ""


def retry_delay(exc: TransportError | UpstreamStatus, attempt: int) -> float | None:
    """Seconds to wait before retrying, or None when `exc` is not worth a retry."""
    backoff = min(BACKOFF_BASE_S * 2.0**attempt, BACKOFF_MAX_S)
    if isinstance(exc, UpstreamStatus):
        if exc.status != 429 and exc.status < 500:
            return None
        try:
            hinted = float(exc.headers.get("retry-after", ""))
        except ValueError:
            return backoff
        return min(max(hinted, 0.0), BACKOFF_MAX_S)
    if isinstance(exc, ConnectTimedOut | ConnectFailed):
        return backoff
    return None
