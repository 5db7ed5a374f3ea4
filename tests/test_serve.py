"""Start-up tuning: the listening socket's kernel options and the collector."""

from __future__ import annotations

import gc
import socket

from npc_server.config import load_config, with_overrides
from npc_server.serve import make_listener, tune_gc


def test_listener_sets_user_timeout_and_send_buffer() -> None:
    """The socket handed to Hypercorn carries TCP_USER_TIMEOUT and the send buffer cap."""
    config = with_overrides(
        load_config(env={}),
        server={
            "host": "127.0.0.1",
            "port": 0,
            "tcp_user_timeout_ms": 7000,
            "send_buffer_bytes": 65536,
        },
    )
    listener = make_listener(config)
    sock = socket.socket(fileno=listener.fd)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 7000
        # Linux doubles the requested size for its own bookkeeping.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 65536
        assert listener.port > 0
    finally:
        sock.close()


def test_tune_gc_raises_the_threshold_and_freezes() -> None:
    """tune_gc collects generation 0 less often and freezes start-up objects; 0 leaves it alone."""
    before = gc.get_threshold()
    try:
        tune_gc(0)
        assert gc.get_threshold() == before
        tune_gc(123_456)
        assert gc.get_threshold() == (123_456, 50, 50)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
