"""Hypercorn fixes, over real sockets: close frames on protocol violations, ambiguous bodies;
the fast write path's fallbacks on real Hypercorn and wsproto objects."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from unittest import mock

import h11._connection
import pytest
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from wsproto.connection import Connection, ConnectionType
from wsproto.extensions import PerMessageDeflate

from npc_server import hypercorn_fixes
from npc_server.hypercorn_fixes import UnsupportedDependency, check_dependencies
from tests.support.server import RunningServer, running_server

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@asynccontextmanager
async def raw_socket(server: RunningServer) -> AsyncIterator[Streams]:
    """A plain TCP connection to the server."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        await writer.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    """The status line and headers of one HTTP response, lowercased."""
    return (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)).lower()


@asynccontextmanager
async def upgraded_socket(server: RunningServer) -> AsyncIterator[Streams]:
    """A raw socket past the WebSocket handshake on /ws."""
    async with raw_socket(server) as (reader, writer):
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        assert (await read_head(reader)).startswith(b"http/1.1 101")
        yield reader, writer


async def until_eof(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), TIMEOUT)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x82\x01x", 1002),  # a client frame without a mask
        (b"\x83\x80\x00\x00\x00\x00", 1002),  # a reserved opcode
        (b"\x81\x81\x00\x00\x00\x00\xff", 1007),  # a text frame that is not UTF-8
    ],
)
async def test_a_protocol_violation_gets_a_close_frame_before_tcp_closes(
    frame: bytes, code: int
) -> None:
    """RFC 6455 7.1.7: the server sends close 1002/1007, then drops the connection."""
    async with running_server() as server, upgraded_socket(server) as (reader, writer):
        writer.write(frame)
        rest = await until_eof(reader)
        assert rest[:1] == b"\x88", rest  # a close frame, unmasked, first of all
        assert int.from_bytes(rest[2:4], "big") == code


async def test_both_content_length_and_transfer_encoding_close_the_connection() -> None:
    """RFC 9112 6.3: the response says Connection: close and the server closes."""
    async with running_server() as server, raw_socket(server) as (reader, writer):
        writer.write(
            b"GET /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        head = await read_head(reader)
        assert head.startswith(b"http/1.1 200") and b"connection: close" in head
        await until_eof(reader)  # returns only once the server has closed


async def test_a_plain_request_keeps_its_connection() -> None:
    """The control case: a chunked request alone is answered and the connection reused."""
    async with running_server() as server, raw_socket(server) as (reader, writer):
        for _ in range(2):
            writer.write(
                b"GET /healthz HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            )
            head = await read_head(reader)
            assert head.startswith(b"http/1.1 200") and b"connection: close" not in head
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            await asyncio.wait_for(reader.readexactly(length), TIMEOUT)


def test_an_unsupported_version_refuses_to_install() -> None:
    """A dependency outside the tested range is refused by name before anything is patched."""
    with mock.patch.object(hypercorn_fixes, "version", return_value="0.19.0"):
        with pytest.raises(UnsupportedDependency, match=r"hypercorn 0\.19\.0 is not supported"):
            check_dependencies()


def test_a_missing_attribute_refuses_to_install() -> None:
    """An internal that moved is named instead of being patched blindly."""
    with mock.patch.object(h11._connection, "_keep_alive", create=False):
        del h11._connection._keep_alive
        with pytest.raises(UnsupportedDependency, match="_keep_alive"):
            check_dependencies()


def accepted_stream(connection: Connection, send: Any = None) -> WSStream:
    """A WSStream in the state an accepted WebSocket's is in, without a socket."""
    stream = WSStream.__new__(WSStream)
    stream.state = ASGIWebsocketState.CONNECTED
    stream.connection = connection
    stream.closed = False
    stream.send = send
    return stream


def fallback_reason(send: Any, caplog: pytest.LogCaptureFixture) -> str:
    """What `direct_writes(send)` logged when it returned None."""
    hypercorn_fixes._reported.clear()
    with caplog.at_level(logging.INFO, logger="npc_server.hypercorn_fixes"):
        assert hypercorn_fixes.direct_writes(send) is None
    [record] = [r for r in caplog.records if r.name == "npc_server.hypercorn_fixes"]
    return record.getMessage()


@pytest.fixture
def fixes_installed() -> None:
    hypercorn_fixes.install_fixes()


@pytest.mark.usefixtures("fixes_installed")
def test_direct_writes_refuse_a_send_that_is_not_hypercorns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another server's (or a wrapped) send falls back to the normal path, saying why."""

    async def send(message: Any) -> None:
        return None

    assert "not Hypercorn's WSStream.app_send" in fallback_reason(send, caplog)


def test_direct_writes_need_the_fixes_installed(caplog: pytest.LogCaptureFixture) -> None:
    """Without install_fixes() (versions not checked) nothing bypasses Hypercorn."""
    stream = accepted_stream(Connection(ConnectionType.SERVER))
    with mock.patch.object(hypercorn_fixes, "_installed", False):
        assert "not installed" in fallback_reason(stream.app_send, caplog)


@pytest.mark.usefixtures("fixes_installed")
def test_direct_writes_fall_back_when_wsproto_internals_are_missing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wsproto without the attribute that tells the negotiated extensions: normal path."""
    connection = Connection(ConnectionType.SERVER)
    del connection._proto
    stream = accepted_stream(connection)
    assert "extensions cannot be read" in fallback_reason(stream.app_send, caplog)


@pytest.mark.usefixtures("fixes_installed")
def test_direct_writes_fall_back_when_permessage_deflate_was_negotiated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Compressed messages must go through wsproto's deflate: normal path."""
    deflate = PerMessageDeflate()
    deflate.accept("permessage-deflate")
    stream = accepted_stream(Connection(ConnectionType.SERVER, [deflate]))
    assert "permessage-deflate" in fallback_reason(stream.app_send, caplog)


@pytest.mark.usefixtures("fixes_installed")
def test_direct_writes_fall_back_off_http1_or_off_asyncio(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stream whose send is not H11Protocol.stream_send (HTTP/2, trio) is not bypassed."""

    async def h2_send(event: Any) -> None:
        return None

    stream = accepted_stream(Connection(ConnectionType.SERVER), send=h2_send)
    assert "not on HTTP/1.1" in fallback_reason(stream.app_send, caplog)


@pytest.mark.usefixtures("fixes_installed")
def test_direct_writes_wait_for_the_accept(caplog: pytest.LogCaptureFixture) -> None:
    """Before websocket.accept there is no WebSocket to write frames to."""
    stream = accepted_stream(Connection(ConnectionType.SERVER))
    stream.state = ASGIWebsocketState.HANDSHAKE
    assert "not accepted" in fallback_reason(stream.app_send, caplog)


def test_a_missing_internal_of_the_write_path_refuses_to_install() -> None:
    """Fix 7's route to the transport is checked with the other patched internals."""
    with mock.patch.object(H11Protocol, "stream_send"):
        del H11Protocol.stream_send
        with pytest.raises(UnsupportedDependency, match="stream_send"):
            check_dependencies()
