"""Run npc-server with `RedisBroker` dropping its own echo before decoding it: a what-if.

Usage: python -m benchmarks.echo_launcher [npc-server args...]
The change proposed in benchmarks/README.md ("Issue 10: cluster", change 1),
applied from outside: a publication whose first bytes name this node as its
origin is dropped before `wire.decode` validates it. The benchmark uses it
only with `NPC_BENCH_SERVER_ECHO=skip` (`python -m benchmarks.cluster_whatif`).
"""

from __future__ import annotations

import runpy
import sys
from typing import Any

import msgpack

from npc_server.brokers import wire
from npc_server.brokers.redis import RedisBroker

_init = RedisBroker.__init__
_deliver = RedisBroker._deliver


def _own_prefix(node_id: str) -> bytes:
    """The envelope's first bytes up to its origin: array header, version, origin."""
    sample = wire.encode_drop(node_id, "")  # its first byte: the array header of any version
    packed: bytes = msgpack.packb([wire.VERSION, node_id])
    return sample[:1] + packed[1:]


def _patched_init(self: RedisBroker, *args: Any, **kwargs: Any) -> None:
    _init(self, *args, **kwargs)
    self._own = _own_prefix(self.node_id)  # type: ignore[attr-defined]


def _patched_deliver(self: RedisBroker, raw_channel: bytes | str, data: Any) -> None:
    if isinstance(data, bytes) and data.startswith(self._own):  # type: ignore[attr-defined]
        return
    _deliver(self, raw_channel, data)


def apply() -> None:
    RedisBroker.__init__ = _patched_init  # type: ignore[method-assign]
    RedisBroker._deliver = _patched_deliver  # type: ignore[method-assign]


if __name__ == "__main__":
    apply()
    sys.argv = ["npc_server", *sys.argv[1:]]
    runpy.run_module("npc_server", run_name="__main__", alter_sys=True)
