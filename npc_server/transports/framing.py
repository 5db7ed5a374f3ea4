"""Server-to-client WebSocket frames (RFC 6455 5.2), sans I/O.

The socket edge's fast write path frames its binary messages itself: one
unfragmented frame each (FIN + opcode 0x2), a 7-, 16- or 64-bit length and
no mask (a server never masks, 5.1). Several messages become one buffer for
one `transport.write`. No extension is applied: the edge uses this only when
none was negotiated.
"""

from __future__ import annotations

from collections.abc import Sequence

FIN_BINARY = 0x82
MAX_7BIT = 125
MAX_16BIT = 0xFFFF
LENGTH_16 = 126
LENGTH_64 = 127

# Most messages (deltas, pongs) are short: their two-byte headers are prebuilt.
_SHORT_HEADERS = tuple(bytes((FIN_BINARY, n)) for n in range(MAX_7BIT + 1))
_HEADER_16 = bytes((FIN_BINARY, LENGTH_16))
_HEADER_64 = bytes((FIN_BINARY, LENGTH_64))


def binary_header(length: int) -> bytes:
    """The header of an unmasked, final binary frame carrying `length` bytes."""
    if length <= MAX_7BIT:
        return _SHORT_HEADERS[length]
    if length <= MAX_16BIT:
        return _HEADER_16 + length.to_bytes(2, "big")
    return _HEADER_64 + length.to_bytes(8, "big")


def binary_frames(messages: Sequence[bytes]) -> bytes:
    """`messages` as consecutive binary frames, in order, in one buffer."""
    if len(messages) == 1 and len(messages[0]) <= MAX_7BIT:  # one token's write
        return _SHORT_HEADERS[len(messages[0])] + messages[0]
    parts: list[bytes] = []
    append = parts.append
    short = _SHORT_HEADERS
    for data in messages:
        length = len(data)
        append(short[length] if length <= MAX_7BIT else binary_header(length))
        append(data)
    return b"".join(parts)
