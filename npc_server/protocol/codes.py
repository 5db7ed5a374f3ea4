"""Close codes and error codes of protocol v1 (see docs/protocol.md).

Close codes 4000-4499 tell the client to reconnect and resume; 4500-4999 tell
it to stop. The standard codes below 4000 keep their WebSocket meaning.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SLOW_CONSUMER = 4000
    HEARTBEAT_TIMEOUT = 4001
    TOKEN_EXPIRED = 4002
    RATE_LIMITED = 4029
    AUTH_FAILED = 4500
    PROTOCOL_VIOLATION = 4501
    REPLACED = 4503
    KICKED = 4508
    TOO_MANY_CONNECTIONS = 4513

    @property
    def should_reconnect(self) -> bool:
        """Whether a client should reconnect (and resume) after this close."""
        return should_reconnect(int(self))


# What a close says when the code that sent it gave no words of its own: a session's
# `on_close` passes the code alone. Every close of the server names its cause.
DEFAULT_REASONS = {
    CloseCode.SLOW_CONSUMER: "too slow: the frames waiting for this socket overflowed its queue",
    CloseCode.REPLACED: "replaced by a newer socket of this session or player",
    CloseCode.KICKED: "kicked by the game server",
    CloseCode.GOING_AWAY: "the session ended",
}


def should_reconnect(code: int) -> bool:
    """The documented client policy for any close code, known or not."""
    if 4000 <= code <= 4499:
        return True
    if 4500 <= code <= 4999:
        return False
    return code in (CloseCode.GOING_AWAY, CloseCode.INTERNAL_ERROR, 1006)


class ErrorCode(StrEnum):
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
