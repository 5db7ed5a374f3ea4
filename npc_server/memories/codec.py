"""How a memory is stored in Redis: one msgpack array per NPC and audience.

`[version, [line, ...]]`, each line `[role, speaker, text]`, or
`[role, speaker, text, call, args]` for a tool line. What Redis hands back is
input like a client's: another version, a truncated value, a stray type
raises `MemoryFormatError`, and the caller treats the memory as empty.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, cast

import msgpack

from npc_server.backends.base import MemoryEntry
from npc_server.memories.base import Lines
from npc_server.protocol.scan import unpack_scanned

VERSION = 1
MAX_BYTES = 1 << 22
ROLES = frozenset({"player", "npc", "tool"})
Role = Literal["player", "npc", "tool"]


class MemoryFormatError(ValueError):
    """A stored value that is not a memory of this version."""


def encode(lines: Iterable[MemoryEntry]) -> bytes:
    rows = [
        [e.role, e.speaker, e.text, e.call, e.args]
        if e.call or e.args
        else [e.role, e.speaker, e.text]
        for e in lines
    ]
    data: bytes = msgpack.packb([VERSION, rows], use_bin_type=True)
    return data


def decode(data: Any) -> Lines:
    """The lines of a stored value; `MemoryFormatError` if it is not one of ours."""
    if not isinstance(data, bytes) or len(data) > MAX_BYTES:
        raise MemoryFormatError("not a memory: wrong type or too large")
    try:
        doc = unpack_scanned(data)
    except Exception as exc:
        raise MemoryFormatError(f"not msgpack: {exc}") from None
    if not isinstance(doc, list) or len(doc) != 2 or doc[0] != VERSION:
        raise MemoryFormatError("not a memory of this version")
    if not isinstance(doc[1], list):
        raise MemoryFormatError("the lines must be a list")
    return tuple(_line(row) for row in doc[1])


def _line(row: Any) -> MemoryEntry:
    if not isinstance(row, list) or len(row) not in (3, 5):
        raise MemoryFormatError(f"a line must have 3 or 5 fields, got {row!r:.80}")
    if not all(isinstance(field, str) for field in row) or row[0] not in ROLES:
        raise MemoryFormatError(f"a line's fields must be strings and its role known: {row!r:.80}")
    role, speaker, text, *rest = row
    call, args = rest or ("", "")
    return MemoryEntry(cast(Role, role), speaker, text, call, args)
