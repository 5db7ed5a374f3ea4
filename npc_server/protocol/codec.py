"""msgpack encoding of server frames and validated decoding of client frames.

Decoding never raises anything but `FrameError`, whose `code` is the error
code of docs/protocol.md to answer with.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import msgpack

from npc_server.protocol.codes import ErrorCode
from npc_server.protocol.frames import (
    Act,
    ClientFrame,
    Context,
    Delta,
    Hello,
    Interrupt,
    Join,
    Leave,
    Limits,
    Ping,
    Pong,
    Refresh,
    RequestId,
    Resume,
    Say,
    Seen,
    ServerFrame,
    ToolResult,
    Typing,
)
from npc_server.protocol.scan import ScanError, scan

MAX_ID_CHARS = 64
MAX_NAME_CHARS = 128
MAX_TOKEN_CHARS = 4096
# Arrays and maps nested in one message (the frame's own map is the first).
MAX_DEPTH = 16
# Arrays and maps in one message: one per 16 bytes allowed, so that what decodes
# costs a few times the message's size (an empty list is 56 bytes, an empty dict 64).
CONTAINER_BYTES = 16
# Arrays and maps nested in `context.data` (the data map itself is the first).
MAX_CONTEXT_DEPTH = 4
ROOM_CHARS = 64
ROOM_RULE = f"1-{ROOM_CHARS} characters of A-Z a-z 0-9 - _ . :"
_ROOM = re.compile(rf"[A-Za-z0-9_.:-]{{1,{ROOM_CHARS}}}")
DEFAULT_LIMITS = Limits()


class FrameError(Exception):
    """A client frame was refused; answer with `error{code, message, id}`."""

    def __init__(self, code: ErrorCode, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


# One packer for every frame (packb builds one per call); encoding never nests.
_PACKER = msgpack.Packer(use_bin_type=True)


def encode_server_frame(frame: ServerFrame, seq: int | None) -> bytes:
    """Encode a server frame as one msgpack map, with `seq` when given."""
    if type(frame) is Delta:
        # The frame of every token: its map built directly, same keys and order.
        body: dict[str, Any] = {
            "turn": frame.turn,
            "text": frame.text,
            "at": frame.at,
            "t": "delta",
        }
    else:
        body = frame.payload()
        body["t"] = frame.T
    if seq is not None:
        body["seq"] = seq
    data: bytes = _PACKER.pack(body)
    return data


def max_containers(frame_bytes: int) -> int:
    """The arrays and maps one message of up to `frame_bytes` may hold."""
    return max(16, frame_bytes // CONTAINER_BYTES)


def decode_map(data: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Unpack one msgpack map with string keys, or raise `FrameError(bad_frame)`.

    The bytes are scanned first (see `scan`), so a message is refused, or
    decoded, in time and memory bounded by its size.
    """
    size = limits.frame_bytes
    try:
        scan(data, max_depth=MAX_DEPTH, max_containers=max_containers(size))
    except ScanError as exc:
        raise FrameError(ErrorCode.BAD_FRAME, f"not a msgpack message: {exc}") from None
    try:
        value = _unpack(data, size, strict_map_key=True)
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        # An int (or nil, float, array) map key anywhere: msgpack refuses it with a
        # ValueError before any check here sees the frame. Name it, with the frame's id.
        raise _key_error(data, size) or FrameError(
            ErrorCode.BAD_FRAME, f"not a msgpack message: {type(exc).__name__}"
        ) from None
    if not isinstance(value, dict):
        raise FrameError(ErrorCode.BAD_FRAME, f"expected a msgpack map, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise _refused_key({k: v for k, v in value.items() if type(k) is str}, key)
    return value


def _unpack(data: bytes, size: int, **options: Any) -> Any:
    """msgpack's decode of a client message, every length bounded by its size."""
    return msgpack.unpackb(
        data,
        raw=False,
        use_list=True,
        max_str_len=size,
        max_bin_len=size,
        max_ext_len=size,
        max_array_len=size,
        max_map_len=size // 2,
        **options,
    )


def _key_error(data: bytes, size: int) -> FrameError | None:
    """The error for a message whose only fault is a map key that is not a string.

    Decoded again with every map built from its string keys alone, so the keys
    msgpack refused (ints hash to chosen values) are never hashed; None when
    the message is bad in another way. Only messages msgpack refused pay for this.
    """
    refused: list[Any] = []

    def string_keys_only(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
        kept = {}
        for key, item in pairs:
            if type(key) is str:
                kept[key] = item
            elif not refused:
                refused.append(key)
        return kept

    try:
        value = _unpack(data, size, strict_map_key=False, object_pairs_hook=string_keys_only)
    except Exception:
        return None
    if not refused or not isinstance(value, dict):
        return None
    return _refused_key(value, refused[0])


def _refused_key(doc: Mapping[str, Any], key: Any) -> FrameError:
    """bad_frame for a non-string map key, naming the frame and carrying its id if it has one."""
    t = doc.get("t")
    name = t if isinstance(t, str) and t in _PARSERS else "frame"
    try:
        request_id = _request_id(doc)
    except FrameError:
        request_id = None
    return FrameError(
        ErrorCode.BAD_FRAME, f"{name}: every map key must be a string, got {_kind(key)}", request_id
    )


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


def _shown(value: Any) -> str:
    """A field's value in an error: a number or boolean as it came (`-1`, `1.5`, `true`:
    its type alone would not say what is wrong with it), anything else by its type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) and len(text := repr(value)) <= 24:
        return text
    return _kind(value)


class _Fields:
    """Typed access to a frame's keys; errors name the frame, key and expectation."""

    def __init__(
        self,
        doc: Mapping[str, Any],
        t: str,
        request_id: RequestId,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.doc = doc
        self.t = t
        self.id = request_id
        self.limits = limits

    def fail(self, key: str, expected: str) -> FrameError:
        got = _shown(self.doc.get(key))
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

    def room(self, key: str = "room", *, required: bool = True) -> Any:
        value = self.doc.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or _ROOM.fullmatch(value) is None:
            raise self.fail(key, f"a room name ({ROOM_RULE})")
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
        inner = _Fields(resume, "hello.resume", f.id, f.limits)
        parsed = Resume(session=inner.string("session"), seq=inner.integer("seq"))
    client = f.doc.get("client")
    return Hello(
        token=f.string("token", max_chars=MAX_TOKEN_CHARS),
        resume=parsed,
        # Informative only, and welcomed whatever its type since v1: refusing another
        # type now would break such a client (protocol.md's compatibility rule).
        client=client if isinstance(client, str) else None,
        id=f.id,
        delta_ms=f.integer("delta_ms", required=False),
    )


def _say(f: _Fields) -> Say:
    # The text cap is enforced by the connection (limits.text_chars), not here.
    return Say(
        id=f.required_id(),
        npc=f.string("npc"),
        text=f.string("text", max_chars=10**9),
        room=f.room(required=False),
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
        room=f.room(required=False),
        id=f.id,
    )


def _context(f: _Fields) -> Context:
    data = f.doc.get("data")
    if not isinstance(data, dict):
        raise f.fail("data", "a map")
    _check_context(data, f.limits, f.id)
    return Context(data=data, npc=f.string("npc", required=False), id=f.id)


def _check_context(data: dict[str, Any], limits: Limits, request_id: RequestId) -> None:
    # Stored per player for later prompts: bounded here by what it costs once
    # decoded (depth and keys), not only by its share of one frame.
    if len(data) > limits.context_keys:
        raise FrameError(
            ErrorCode.TOO_LONG,
            f"context.data has {len(data)} keys; the limit is {limits.context_keys}",
            request_id,
        )
    if nesting(data) > MAX_CONTEXT_DEPTH:
        raise FrameError(
            ErrorCode.BAD_FRAME,
            f"context.data nests deeper than {MAX_CONTEXT_DEPTH} arrays and maps",
            request_id,
        )
    if not string_keys(data):
        raise FrameError(
            ErrorCode.BAD_FRAME, "context.data: every map key must be a string", request_id
        )
    size = len(msgpack.packb(data, use_bin_type=True))
    if size > limits.context_bytes:
        raise FrameError(
            ErrorCode.TOO_LONG,
            f"context.data is {size} bytes encoded; the limit is {limits.context_bytes}",
            request_id,
        )


def fits_context(data: Mapping[str, Any]) -> bool:
    """Whether a context from Redis or another node is one a client could have set: at
    most MAX_CONTEXT_DEPTH deep, string keys at every level (sizes are checked apart)."""
    return nesting(data) <= MAX_CONTEXT_DEPTH and string_keys(data)


def string_keys(value: Any) -> bool:
    """Whether every map in `value`, at every level, has only string keys (msgpack also
    allows bytes: a prompt cannot sort or print those beside strings)."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            if not all(isinstance(key, str) for key in item):
                return False
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return True


def nesting(value: Any) -> int:
    """How many arrays and maps deep `value` nests (0 for a scalar), without recursion."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        todo.extend((child, depth + 1) for child in children)
    return deepest


def _act(f: _Fields) -> Act:
    return Act(id=f.required_id(), action=f.string("action"), accept=f.boolean("accept"))


def _join(f: _Fields) -> Join:
    return Join(id=f.required_id(), room=f.room())


def _leave(f: _Fields) -> Leave:
    return Leave(id=f.required_id(), room=f.room())


def _ping(f: _Fields) -> Ping:
    return Ping(id=f.id, ts=f.doc.get("ts"))


def _pong(f: _Fields) -> Pong:
    return Pong(ts=f.doc.get("ts"), id=f.id)


def _refresh(f: _Fields) -> Refresh:
    return Refresh(id=f.required_id(), token=f.string("token", max_chars=MAX_TOKEN_CHARS))


def _tool_result(f: _Fields) -> ToolResult:
    result = f.doc.get("result")
    # Kept for the model's next request and the NPC's memory: bounded like context.
    if nesting(result) > MAX_CONTEXT_DEPTH:
        raise FrameError(
            ErrorCode.BAD_FRAME,
            f"tool.result.result nests deeper than {MAX_CONTEXT_DEPTH} arrays and maps",
            f.id,
        )
    if not string_keys(result):  # it goes to the model as JSON
        raise FrameError(
            ErrorCode.BAD_FRAME, "tool.result.result: every map key must be a string", f.id
        )
    return ToolResult(call=f.string("call"), result=result, id=f.id)


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
    "tool.result": _tool_result,
}


def decode_client_frame(data: bytes, limits: Limits = DEFAULT_LIMITS) -> ClientFrame:
    """Decode and validate one client message (of at most `limits.frame_bytes`)."""
    doc = decode_map(data, limits)
    t = doc.get("t")
    if not isinstance(t, str):
        raise FrameError(ErrorCode.BAD_FRAME, f"'t' must be a string, got {_kind(t)}")
    request_id = _request_id(doc)
    parser = _PARSERS.get(t)
    if parser is None:
        shown = t if len(t) <= 32 else t[:32] + "…"
        raise FrameError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {shown!r}", request_id)
    return parser(_Fields(doc, t, request_id, limits))
