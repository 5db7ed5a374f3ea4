"""A structural pre-scan of msgpack bytes that bounds decoding work before it starts.

msgpack's C decoder allocates a container for the length its header claims
before reading any element, and nests up to 1024 deep: one 16 KiB message of
nested array headers that each claim 16383 elements cost ~90 ms and ~80 MB to
reject. `scan()` walks the bytes once, iteratively, with no allocation per
element: it refuses a message that nests deeper than `max_depth`, holds more
than `max_containers` containers, claims more elements than bytes remain, is
truncated or has trailing bytes. Each step consumes at least one byte or
closes one container, so a message of n bytes costs at most 2n steps, and
whatever passes decodes into objects of about the size of what it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack


class ScanError(ValueError):
    """The bytes are not one well-formed msgpack value within the bounds."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset  # how far the scan had read when it refused


@dataclass(frozen=True, slots=True)
class ScanReport:
    """What one scan saw: `values` (containers included), `containers` and their `depth`.

    The scan's loop ran exactly `values + containers` times (once per value read,
    once per container closed).
    """

    values: int
    containers: int
    depth: int

    @property
    def steps(self) -> int:
        """Iterations of the scan's loop."""
        return self.values + self.containers


def _fixed_sizes() -> list[int]:
    # Total size of each scalar whose size the first byte tells; 0 for the rest.
    sizes = [0] * 256
    for b in (*range(0x00, 0x80), *range(0xE0, 0x100), 0xC0, 0xC2, 0xC3):
        sizes[b] = 1
    for b in range(0xA0, 0xC0):  # fixstr
        sizes[b] = 1 + (b & 0x1F)
    more = {0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9, 0xD0: 2, 0xD1: 3}
    more |= {0xD2: 5, 0xD3: 9, 0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18}
    for b, size in more.items():
        sizes[b] = size
    return sizes


_FIXED = _fixed_sizes()
# str, bin and ext with a length field: first byte -> (length bytes, extra bytes).
_SIZED = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0)}
_SIZED |= {0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1)}
# array and map with a length field: first byte -> (length bytes, values per element).
_COUNTED = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


def _header(data: bytes, pos: int, b: int) -> tuple[int, int, bool]:
    """(position after the header, length it claims, whether a container) for a non-fixed byte."""
    if 0x80 <= b <= 0x9F:  # fixmap, fixarray
        return pos + 1, (b & 0x0F) * (2 if b < 0x90 else 1), True
    sized = _SIZED.get(b)
    if sized is not None:
        width, extra = sized
        start = pos + 1 + width
        return start, int.from_bytes(data[pos + 1 : start], "big") + extra, False
    counted = _COUNTED.get(b)
    if counted is None:
        raise ScanError(f"byte 0x{b:02x} at offset {pos} starts no msgpack value", pos)
    width, per = counted
    start = pos + 1 + width
    return start, int.from_bytes(data[pos + 1 : start], "big") * per, True


def scan(data: bytes, *, max_depth: int, max_containers: int) -> ScanReport:
    """Check that `data` is exactly one msgpack value within the bounds; raise `ScanError`."""
    end = len(data)
    pos = 0
    left = 1  # values still to read in the innermost open container (the top level: one)
    outer: list[int] = []  # the same count for each enclosing container
    values = 1
    containers = deepest = 0
    while left or outer:
        if not left:
            left = outer.pop()
            continue
        if pos >= end:
            raise ScanError(f"truncated after {end} bytes", end)
        left -= 1
        b = data[pos]
        size = _FIXED[b]
        if size:
            pos += size
            continue
        at = pos
        pos, length, is_container = _header(data, pos, b)
        if not is_container:
            pos += length
            continue
        if length > end - pos:
            raise ScanError(f"a container at offset {at} claims {length} values in fewer bytes", at)
        containers += 1
        if containers > max_containers:
            raise ScanError(f"more than {max_containers} arrays and maps", at)
        outer.append(left)
        deepest = max(deepest, len(outer))
        if deepest > max_depth:
            raise ScanError(f"nested deeper than {max_depth} arrays and maps", at)
        left = length
        values += length
    if pos != end:
        raise ScanError(f"truncated after {end} bytes" if pos > end else "trailing bytes", end)
    return ScanReport(values=values, containers=containers, depth=deepest)


FOREIGN_DEPTH = 32  # what other processes write: a handed-over queue of snapshots nests ~15


def unpack_scanned(data: bytes, *, max_depth: int = FOREIGN_DEPTH) -> Any:
    """One msgpack value that another process wrote (a value in Redis, a frame another
    node kept), unpacked after `scan`: refused with `ScanError` (a `ValueError`) in time
    and memory bounded by its size, as a client's frame is. String keys or bytes keys
    only (`strict_map_key`); str as str."""
    scan(data, max_depth=max_depth, max_containers=len(data))
    return msgpack.unpackb(data, raw=False, strict_map_key=True)
