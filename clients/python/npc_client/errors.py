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
     │    ├── BadToken            bad_token
     │    ├── Unavailable         unavailable (cluster mode; see `retry_after`)
     │    └── UnknownCall         unknown_call
     ├── ConnectionClosedError    the connection is closed for good (`code`, `reconnectable`)
     ├── ServerUnreachable        no WebSocket could be opened (refused, DNS, HTTP status)
     ├── RequestLost              the session was lost before the server answered
     └── ProtocolError            the server sent something protocol v1 does not allow

Error codes map to classes in one place, `error_from_frame`. `CloseCode` and
`ErrorCode` list every close code and error code of docs/protocol.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum, StrEnum
from typing import Any

RequestId = int | str


class CloseCode(IntEnum):
    """The WebSocket close codes of protocol v1 (docs/protocol.md, "Close codes")."""

    NORMAL = 1000  # the session is over
    GOING_AWAY = 1001  # the server drains: resume, anywhere
    ABNORMAL = 1006  # no close frame (network dropped, process killed)
    POLICY_VIOLATION = 1008  # wrong WebSocket path (seen as HTTP 403 at the handshake)
    MESSAGE_TOO_BIG = 1009  # a message over limits.frame_bytes
    INTERNAL_ERROR = 1011
    SLOW_CONSUMER = 4000
    HEARTBEAT_TIMEOUT = 4001
    TOKEN_EXPIRED = 4002  # renew the token, then resume
    RATE_LIMITED = 4029  # resume after a backoff of a few seconds
    AUTH_FAILED = 4500
    PROTOCOL_VIOLATION = 4501
    REPLACED = 4503
    KICKED = 4508  # the game server kicked (or banned) the player: do not reconnect
    TOO_MANY_CONNECTIONS = 4513


class ErrorCode(StrEnum):
    """The `error.code` values of protocol v1 (docs/protocol.md, "Error codes")."""

    BAD_FRAME = "bad_frame"
    UNKNOWN_TYPE = "unknown_type"
    TOO_LONG = "too_long"
    UNKNOWN_NPC = "unknown_npc"
    UNKNOWN_TURN = "unknown_turn"
    UNKNOWN_ACTION = "unknown_action"
    NOT_IN_ROOM = "not_in_room"
    RATE_LIMITED = "rate_limited"
    BUSY = "busy"
    BACKEND_ERROR = "backend_error"
    FORBIDDEN = "forbidden"
    BAD_TOKEN = "bad_token"
    UNAVAILABLE = "unavailable"
    UNKNOWN_CALL = "unknown_call"


class NpcClientError(Exception):
    """Base of every exception this package raises."""


class NpcError(NpcClientError):
    """An `error` frame: the server refused or failed a request.

    `code` is the wire error code (e.g. "unknown_npc"); `message` is the
    server's explanation; `retry_after` is set for `rate_limited`, `busy` and
    `unavailable`.
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
    code = ErrorCode.BAD_FRAME


class UnknownType(NpcError):
    code = ErrorCode.UNKNOWN_TYPE


class TooLong(NpcError):
    code = ErrorCode.TOO_LONG


class UnknownNpc(NpcError):
    code = ErrorCode.UNKNOWN_NPC


class UnknownTurn(NpcError):
    code = ErrorCode.UNKNOWN_TURN


class UnknownAction(NpcError):
    code = ErrorCode.UNKNOWN_ACTION


class NotInRoom(NpcError):
    code = ErrorCode.NOT_IN_ROOM


class RateLimited(NpcError):
    code = ErrorCode.RATE_LIMITED


class Busy(NpcError):
    code = ErrorCode.BUSY


class BackendError(NpcError):
    code = ErrorCode.BACKEND_ERROR


class Forbidden(NpcError):
    code = ErrorCode.FORBIDDEN


class BadToken(NpcError):
    code = ErrorCode.BAD_TOKEN


class Unavailable(NpcError):
    """Cluster mode: what was asked needs Redis, which the server cannot reach now;
    try again after `retry_after` (everything else goes on)."""

    code = ErrorCode.UNAVAILABLE


class UnknownCall(NpcError):
    """A `tool.result` for a call that is not waiting for this player's answer (it
    ended, timed out, was cancelled, or asks someone else)."""

    code = ErrorCode.UNKNOWN_CALL


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
        Unavailable,
        UnknownCall,
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
    """docs/protocol.md's client policy for a close code, known or not: 4000-4499 and
    1001/1006/1011 reconnect; 4500-4999 (4508 kicked among them) and the rest stop."""
    if 4000 <= code <= 4499:
        return True
    if 4500 <= code <= 4999:
        return False
    return code in (CloseCode.GOING_AWAY, CloseCode.ABNORMAL, CloseCode.INTERNAL_ERROR)


class ConnectionClosedError(NpcClientError):
    """The connection is closed and the client will not reconnect.

    `code` is the WebSocket close code (1006 when the connection dropped
    without one); `reconnectable` says whether the protocol would allow a
    reconnect (False for 1000 and 4500-4999, e.g. 4500 for a refused token or
    4508 when the game server kicked the player). Compare `code` with `CloseCode`.
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
