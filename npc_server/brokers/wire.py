"""What nodes send each other through a cluster broker, validated as client frames are.

One publication is one msgpack array: `[version, origin, number, op, exclude,
body]`, where `number` counts the origin's publications (1, 2, ... in the order
it published them, which Redis keeps for each subscriber) and `op` is `f` (a
server frame: `body` is its map with `t`), `d` (drop a turn's queued deltas:
`body` is the turn id) or `m` (a message between nodes: `body` is a map whose
`k` names its kind; the receiving handler validates the rest). Another node's bytes are input
like a client's: anything that does not fit (another version, a stray value,
a truncated entry, a frame whose keys or types are wrong) raises `WireError`
and is dropped by the caller, never delivered and never a crash.

Version 3: nodes announce their subscriptions (a message of kind `interest`)
and publish only where another node listens, so a node of version 2, which
does not announce, must not share a cluster with them: each drops the other's
publications as another version's.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, NamedTuple, Union

import msgpack

from npc_server.protocol import frames
from npc_server.protocol.frames import ServerFrame
from npc_server.protocol.scan import unpack_scanned

VERSION = 3
MAX_BYTES = 1 << 20
SCAN_ABOVE = 512  # bytes


class WireError(ValueError):
    """Bytes from another node that are not a publication of this version."""


class Publication(NamedTuple):
    """One decoded publication (a tuple: one is made per relayed token)."""

    origin: str
    exclude: str | None
    frame: ServerFrame | None = None
    drop_turn: str | None = None
    message: dict[str, Any] | None = None
    number: int = 0


def frame_body(frame: ServerFrame) -> dict[str, Any]:
    """A frame as the map `decode_frame` reads (inside a message between nodes)."""
    body = frame.payload()
    body["t"] = frame.T
    return body


def encode_frame(origin: str, frame: ServerFrame, exclude: str | None, number: int = 0) -> bytes:
    body = frame_body(frame)
    data: bytes = msgpack.packb([VERSION, origin, number, "f", exclude, body], use_bin_type=True)
    return data


def encode_drop(origin: str, turn: str, number: int = 0) -> bytes:
    data: bytes = msgpack.packb([VERSION, origin, number, "d", None, turn], use_bin_type=True)
    return data


def encode_message(origin: str, message: Mapping[str, Any], number: int = 0) -> bytes:
    data: bytes = msgpack.packb(
        [VERSION, origin, number, "m", None, dict(message)], use_bin_type=True
    )
    return data


def origin_prefix(origin: str) -> bytes:
    """The first bytes of every publication of `origin`: its echo is known without
    decoding it."""
    whole: bytes = msgpack.packb([VERSION, origin, 0, "d", None, ""], use_bin_type=True)
    head: bytes = msgpack.packb([VERSION, origin], use_bin_type=True)
    return whole[:1] + head[1:]


def decode(data: bytes) -> Publication:
    """A publication from another node; `WireError` if it is not one."""
    if not isinstance(data, bytes) or len(data) > MAX_BYTES:
        raise WireError("not a publication: wrong type or too large")
    try:
        # Scanned first as a client's frame is, except the small ones (every delta):
        # what bytes that claim more than they hold cost grows with the square of
        # their size, at most ~0.4 MB below SCAN_ABOVE, and the scan costs 7x the decode.
        if len(data) > SCAN_ABOVE:
            doc = unpack_scanned(data)
        else:
            doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise WireError(f"not msgpack: {exc}") from None
    if not isinstance(doc, list) or len(doc) != 6 or doc[0] != VERSION:
        raise WireError("not a publication of this version")
    _, origin, number, op, exclude, body = doc
    if not isinstance(origin, str) or not (exclude is None or isinstance(exclude, str)):
        raise WireError("origin and exclude must be strings")
    if not isinstance(number, int) or isinstance(number, bool) or number < 0:
        raise WireError("number must be an integer >= 0")
    if op == "d" and isinstance(body, str):
        return Publication(origin, exclude, drop_turn=body, number=number)
    if op == "f" and isinstance(body, dict):
        return Publication(origin, exclude, frame=decode_frame(body), number=number)
    if op == "m" and isinstance(body, dict) and isinstance(body.get("k"), str):
        return Publication(origin, exclude, message=body, number=number)
    raise WireError(f"unknown operation {op!r}")


def decode_frame(body: Mapping[str, Any]) -> ServerFrame:
    """A server frame from its map; every key must be a field of the right type."""
    kind = body.get("t")
    cls = _CLASSES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(f"unknown frame type {kind!r}")
    checks = _CHECKS[cls]
    values = dict(body)
    del values["t"]
    for name, value in values.items():
        check = checks.get(name)
        if check is None:
            unknown = sorted(map(repr, set(values) - set(checks)))  # bytes keys too
            raise WireError(f"{kind}: unknown keys {', '.join(unknown)}")
        if not check(value):
            raise WireError(f"{kind}.{name}: {value!r} is not {_HINTS[cls][name]}")
    try:
        return cls(**values)
    except TypeError as exc:  # a required key is missing
        raise WireError(f"{kind}: {exc}") from None


def _fits(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(value, arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:  # `members.members`
        (item_hint,) = typing.get_args(hint)
        return isinstance(value, list) and all(_fits(item, item_hint) for item in value)
    if origin is not None and issubclass(origin, Mapping):
        key_hint, value_hint = typing.get_args(hint)
        return isinstance(value, dict) and all(
            _fits(k, key_hint) and _fits(v, value_hint) for k, v in value.items()
        )
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(hint, type) and isinstance(value, hint)


def _check_of(hint: Any) -> Callable[[Any], bool]:
    """A test of one field's value, made once per field: `_fits` for `hint`, with the
    common hints (one per token of every relayed turn) answered without reflection."""
    if hint is str:
        return lambda value: type(value) is str
    if hint is int:
        return lambda value: type(value) is int
    if hint == (str | None):
        return lambda value: value is None or type(value) is str
    if hint == (int | None):
        return lambda value: value is None or type(value) is int
    return lambda value: _fits(value, hint)


def _server_frame_classes() -> dict[str, type[ServerFrame]]:
    found: dict[str, type[ServerFrame]] = {}
    for value in vars(frames).values():
        if isinstance(value, type) and issubclass(value, ServerFrame) and value.T:
            found[value.T] = value
    return found


_CLASSES = _server_frame_classes()
_HINTS: dict[type[ServerFrame], dict[str, Any]] = {
    cls: {f.name: typing.get_type_hints(cls, vars(frames))[f.name] for f in fields(cls) if f.init}
    for cls in _CLASSES.values()
}
_CHECKS: dict[type[ServerFrame], dict[str, Callable[[Any], bool]]] = {
    cls: {name: _check_of(hint) for name, hint in hints.items()} for cls, hints in _HINTS.items()
}
