"""msgpack encoding of server frames and validated decoding of client frames.

Decoding never raises anything but `FrameError`, whose `code` is the error
code of PROTOCOL.md to answer with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgpack

from npc_server.protocol.codes import ErrorCode
from npc_server.protocol.frames import (
    Act,
    ClientFrame,
    Context,
    Hello,
    Interrupt,
    Join,
    Leave,
    Ping,
    Pong,
    Refresh,
    RequestId,
    Resume,
    Say,
    Seen,
    ServerFrame,
    Typing,
)

MAX_ID_CHARS = 64
MAX_NAME_CHARS = 128
MAX_TOKEN_CHARS = 4096


class FrameError(Exception):
    """A client frame was refused; answer with `error{code, message, id}`."""

    def __init__(self, code: ErrorCode, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def encode_server_frame(frame: ServerFrame, seq: int | None) -> bytes:
    """Encode a server frame as one msgpack map, with `seq` when given."""
    body = frame.payload()
    body["t"] = frame.T
    if seq is not None:
        body["seq"] = seq
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def decode_map(data: bytes) -> dict[str, Any]:
    """Unpack one msgpack map with string keys, or raise `FrameError(bad_frame)`."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise FrameError(
            ErrorCode.BAD_FRAME, f"not a msgpack message: {type(exc).__name__}"
        ) from None
    if not isinstance(value, dict):
        raise FrameError(ErrorCode.BAD_FRAME, f"expected a msgpack map, got {type(value).__name__}")
    if any(not isinstance(k, str) for k in value):
        raise FrameError(ErrorCode.BAD_FRAME, "map keys must be strings")
    return value


def _request_id(doc: Mapping[str, Any]) -> RequestId:
    value = doc.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise FrameError(
            ErrorCode.BAD_FRAME, f"'id' must be an int or a short string, got {_kind(value)}"
        )
    if isinstance(value, str) and len(value) > MAX_ID_CHARS:
        raise FrameError(ErrorCode.BAD_FRAME, f"'id' must be at most {MAX_ID_CHARS} characters")
    return value


def _kind(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


class _Fields:
    """Typed access to a frame's keys; errors name the frame, key and expectation."""

    def __init__(self, doc: Mapping[str, Any], t: str, request_id: RequestId) -> None:
        self.doc = doc
        self.t = t
        self.id = request_id

    def fail(self, key: str, expected: str) -> FrameError:
        got = _kind(self.doc.get(key))
        return FrameError(
            ErrorCode.BAD_FRAME, f"{self.t}.{key} must be {expected}, got {got}", self.id
        )

    def string(self, key: str, *, max_chars: int = MAX_NAME_CHARS, required: bool = True) -> Any:
        value = self.doc.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or (not value and required):
            raise self.fail(key, "a non-empty string")
        if len(value) > max_chars:
            raise FrameError(
                ErrorCode.BAD_FRAME, f"{self.t}.{key} is longer than {max_chars}", self.id
            )
        return value

    def integer(self, key: str, *, required: bool = True) -> Any:
        value = self.doc.get(key)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(key, "a non-negative integer")
        return value

    def boolean(self, key: str) -> bool:
        value = self.doc.get(key)
        if not isinstance(value, bool):
            raise self.fail(key, "a boolean")
        return value

    def required_id(self) -> RequestId:
        if self.id is None:
            raise FrameError(ErrorCode.BAD_FRAME, f"{self.t} needs an 'id' to answer")
        return self.id


def _hello(f: _Fields) -> Hello:
    resume = f.doc.get("resume")
    parsed: Resume | None = None
    if resume is not None:
        if not isinstance(resume, dict):
            raise f.fail("resume", "a map {session, seq}")
        inner = _Fields(resume, "hello.resume", f.id)
        parsed = Resume(session=inner.string("session"), seq=inner.integer("seq"))
    client = f.doc.get("client")
    return Hello(
        token=f.string("token", max_chars=MAX_TOKEN_CHARS),
        resume=parsed,
        client=client if isinstance(client, str) else None,
        id=f.id,
    )


def _say(f: _Fields) -> Say:
    # The text cap is enforced by the connection (limits.text_chars), not here.
    return Say(
        id=f.required_id(),
        npc=f.string("npc"),
        text=f.string("text", max_chars=10**9),
        room=f.string("room", required=False),
    )


def _interrupt(f: _Fields) -> Interrupt:
    return Interrupt(
        id=f.id, turn=f.string("turn", required=False), shown=f.integer("shown", required=False)
    )


def _seen(f: _Fields) -> Seen:
    return Seen(turn=f.string("turn"), shown=f.integer("shown"), id=f.id)


def _typing(f: _Fields) -> Typing:
    return Typing(
        on=f.boolean("on"),
        npc=f.string("npc", required=False),
        room=f.string("room", required=False),
        id=f.id,
    )


def _context(f: _Fields) -> Context:
    data = f.doc.get("data")
    if not isinstance(data, dict):
        raise f.fail("data", "a map")
    return Context(data=data, npc=f.string("npc", required=False), id=f.id)


def _act(f: _Fields) -> Act:
    return Act(id=f.required_id(), action=f.string("action"), accept=f.boolean("accept"))


def _join(f: _Fields) -> Join:
    return Join(id=f.required_id(), room=f.string("room"))


def _leave(f: _Fields) -> Leave:
    return Leave(id=f.required_id(), room=f.string("room"))


def _ping(f: _Fields) -> Ping:
    return Ping(id=f.id, ts=f.doc.get("ts"))


def _pong(f: _Fields) -> Pong:
    return Pong(ts=f.doc.get("ts"), id=f.id)


def _refresh(f: _Fields) -> Refresh:
    return Refresh(id=f.required_id(), token=f.string("token", max_chars=MAX_TOKEN_CHARS))


_PARSERS: dict[str, Callable[[_Fields], ClientFrame]] = {
    "hello": _hello,
    "say": _say,
    "interrupt": _interrupt,
    "seen": _seen,
    "typing": _typing,
    "context": _context,
    "act": _act,
    "join": _join,
    "leave": _leave,
    "ping": _ping,
    "pong": _pong,
    "refresh": _refresh,
}


def decode_client_frame(data: bytes) -> ClientFrame:
    """Decode and validate one client message into a frame dataclass."""
    doc = decode_map(data)
    t = doc.get("t")
    if not isinstance(t, str):
        raise FrameError(ErrorCode.BAD_FRAME, f"'t' must be a string, got {_kind(t)}")
    request_id = _request_id(doc)
    parser = _PARSERS.get(t)
    if parser is None:
        shown = t if len(t) <= 32 else t[:32] + "…"
        raise FrameError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {shown!r}", request_id)
    return parser(_Fields(doc, t, request_id))
