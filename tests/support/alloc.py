"""How much memory a call allocates at its peak (tracemalloc)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager


class Peak:
    bytes = 0


@contextmanager
def peak_allocation() -> Iterator[Peak]:
    """The peak of what the block allocated above what was allocated when it began."""
    peak = Peak()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        yield peak
        peak.bytes = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def length_claims(levels: int) -> bytes:
    """msgpack's decoder allocates what each array header claims before reading it: this
    many nested headers, each claiming as many values as the bytes hold (~40 MB to
    refuse at 1,000 levels, where the bytes are 5 KB)."""
    claim = (5 * levels).to_bytes(4, "big")
    return (b"\xdd" + claim) * levels
