"""Exceptions of the NPC client.

The hierarchy::

    NpcClientError
     ├── NpcError                 the server answered a request with `error`
     │    ├── BadFrame            bad_frame
     │    ├── UnknownType         unknown_type
     │    ├── TooLong             too_long
     │    ├── UnknownNpc          unknown_npc
     │    ├── UnknownTurn         unknown_turn
     │    ├── UnknownAction       unknown_action
     │    ├── NotInRoom           not_in_room
     │    ├── RateLimited         rate_limited (see `retry_after`)
     │    ├── Busy                busy (see `retry_after`)
     │    ├── BackendError        backend_error
     │    ├── Forbidden           forbidden
     │    └── BadToken            bad_token
     ├── ConnectionClosedError    the connection is closed for good (`code`, `reconnectable`)
     ├── ServerUnreachable        no WebSocket could be opened (refused, DNS, HTTP status)
     ├── RequestLost              the session was lost before the server answered
     └── ProtocolError            the server sent something protocol v1 does not allow

Error codes map to classes in one place, `error_from_frame`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RequestId = int | str


class NpcClientError(Exception):
    """Base of every exception this package raises."""


class NpcError(NpcClientError):
    """An `error` frame: the server refused or failed a request.

    `code` is the wire error code (e.g. "unknown_npc"); `message` is the
    server's explanation; `retry_after` is set for `rate_limited` and `busy`.
    """

    code: str = ""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retry_after: float | None = None,
        request_id: RequestId | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.retry_after = retry_after
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BadFrame(NpcError):
    code = "bad_frame"


class UnknownType(NpcError):
    code = "unknown_type"


class TooLong(NpcError):
    code = "too_long"


class UnknownNpc(NpcError):
    code = "unknown_npc"


class UnknownTurn(NpcError):
    code = "unknown_turn"


class UnknownAction(NpcError):
    code = "unknown_action"


class NotInRoom(NpcError):
    code = "not_in_room"


class RateLimited(NpcError):
    code = "rate_limited"


class Busy(NpcError):
    code = "busy"


class BackendError(NpcError):
    code = "backend_error"


class Forbidden(NpcError):
    code = "forbidden"


class BadToken(NpcError):
    code = "bad_token"


_BY_CODE: dict[str, type[NpcError]] = {
    cls.code: cls
    for cls in (
        BadFrame,
        UnknownType,
        TooLong,
        UnknownNpc,
        UnknownTurn,
        UnknownAction,
        NotInRoom,
        RateLimited,
        Busy,
        BackendError,
        Forbidden,
        BadToken,
    )
}


def error_from_frame(frame: Mapping[str, Any]) -> NpcError:
    """The exception for an `error` frame; unknown codes give a plain `NpcError`."""
    code = str(frame.get("code") or "unknown")
    message = str(frame.get("message") or "")
    retry_after = frame.get("retry_after")
    retry = float(retry_after) if isinstance(retry_after, int | float) else None
    request_id = frame.get("id")
    request_id = request_id if isinstance(request_id, int | str) else None
    cls = _BY_CODE.get(code)
    if cls is None:
        return NpcError(message, code=code, retry_after=retry, request_id=request_id)
    return cls(message, retry_after=retry, request_id=request_id)


def should_reconnect(code: int) -> bool:
    """docs/protocol.md's client policy for a close code: 4000-4499 and 1001/1006/1011 retry."""
    if 4000 <= code <= 4499:
        return True
    if 4500 <= code <= 4999:
        return False
    return code in (1001, 1006, 1011)


class ConnectionClosedError(NpcClientError):
    """The connection is closed and the client will not reconnect.

    `code` is the WebSocket close code (1006 when the connection dropped
    without one); `reconnectable` says whether the protocol would allow a
    reconnect (False for 1000 and 4500-4999, e.g. 4500 for a refused token).
    """

    def __init__(self, code: int, reason: str = "", *, reconnectable: bool | None = None) -> None:
        self.code = code
        self.reason = reason
        self.reconnectable = should_reconnect(code) if reconnectable is None else reconnectable
        detail = f": {reason}" if reason else ""
        super().__init__(f"connection closed with code {code}{detail}")


class ServerUnreachable(NpcClientError):
    """No WebSocket could be opened to `url`; `cause` says why."""

    def __init__(self, url: str, cause: str) -> None:
        self.url = url
        self.cause = cause
        super().__init__(f"cannot reach server at {url}: {cause}")


class RequestLost(NpcClientError):
    """The server's session was replaced before it answered this request.

    The request may or may not have taken effect (the client never resends a
    `say`, which could start a second turn).
    """


class ProtocolError(NpcClientError):
    """The server sent something that protocol v1 does not allow."""
