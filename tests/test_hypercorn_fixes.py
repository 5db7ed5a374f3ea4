"""Hypercorn fixes, over real sockets: close frames on protocol violations (the server's
close, as the app records it), ambiguous bodies; the fast write path's fallbacks on real
Hypercorn and wsproto objects."""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, cast
from unittest import mock

import h11._connection
import httpx
import msgpack
import pytest
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.events import Closed as HypercornClosed
from hypercorn.events import RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from prometheus_client.parser import text_string_to_metric_families
from wsproto.connection import Connection, ConnectionType
from wsproto.extensions import PerMessageDeflate

from npc_server import hypercorn_fixes
from npc_server.config import with_overrides
from npc_server.events import Closed, NodeEvent
from npc_server.hypercorn_fixes import UnsupportedDependency, check_dependencies
from npc_server.protocol.codes import CloseCode
from tests.support.client import connect
from tests.support.server import RunningServer, running_server, server_config
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0
API_KEY = "metrics-key-for-hypercorn-fix-tests"  # to scrape /metrics
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


# Frames wsproto refuses, and the close code it fails the connection with.
VIOLATIONS = pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x82\x01x", 1002),  # a client frame without a mask
        (b"\x83\x80\x00\x00\x00\x00", 1002),  # a reserved opcode
        (b"\x81\x81\x00\x00\x00\x00\xff", 1007),  # a text frame that is not UTF-8
        # A text message whose UTF-8 breaks in its second fragment (e2 80, then 28).
        (b"\x01\x81\x00\x00\x00\x00\xe2\x80\x81\x00\x00\x00\x00\x28", 1007),
        (b"\x88\x82\x00\x00\x00\x00\x03\xe7", 1002),  # a close frame with code 999
    ],
    ids=["unmasked", "reserved-opcode", "invalid-utf8", "utf8-across-fragments", "close-999"],
)


@VIOLATIONS
async def test_a_protocol_violation_gets_a_close_frame_before_tcp_closes(
    frame: bytes, code: int
) -> None:
    """RFC 6455 7.1.7: the server sends close 1002/1007, then drops the connection."""
    async with running_server() as server, upgraded_socket(server) as (reader, writer):
        writer.write(frame)
        rest = await until_eof(reader)
        assert rest[:1] == b"\x88", rest  # a close frame, unmasked, first of all
        assert int.from_bytes(rest[2:4], "big") == code


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame, masked with the key 0 (so the payload goes as it is)."""
    size = len(payload)
    length = bytes([0x80 | size]) if size < 126 else b"\xfe" + size.to_bytes(2, "big")
    return bytes([0x80 | opcode]) + length + b"\x00" * 4 + payload


async def server_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The opcode and payload of the next frame the server sends (unmasked, < 64 KiB)."""
    head = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    size = head[1] & 0x7F
    if size == 126:
        size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), TIMEOUT), "big")
    return head[0] & 0x0F, await asyncio.wait_for(reader.readexactly(size), TIMEOUT)


async def hello_raw(
    server: RunningServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """alice's hello on a raw upgraded socket, and its welcome read."""
    writer.write(client_frame(0x2, msgpack.packb({"t": "hello", "token": server.token("alice")})))
    opcode, payload = await server_frame(reader)
    assert (opcode, msgpack.unpackb(payload)["t"]) == (0x2, "welcome")


async def close_code_received(reader: asyncio.StreamReader) -> int:
    """Skip data frames up to the server's close frame; its code, once TCP has closed."""
    opcode, payload = await server_frame(reader)
    while opcode != 0x8:
        opcode, payload = await server_frame(reader)
    assert await until_eof(reader) == b""  # nothing follows the close frame
    return int.from_bytes(payload[:2], "big")


async def closed_by(
    server: RunningServer, data: bytes, after_hello: bool
) -> tuple[int, list[NodeEvent]]:
    """`data` sent on a raw socket (after alice's hello, or before any): the close code
    the server answers with, and the node's events (watched from before the socket)."""
    events: list[NodeEvent] = []
    server.node.events.subscribe(events.append)
    async with upgraded_socket(server) as (reader, writer):
        if after_hello:
            await hello_raw(server, reader, writer)
        writer.write(data)
        return await close_code_received(reader), events


async def closes_counted(server: RunningServer) -> dict[tuple[str, str], float]:
    """npc_server_closes_total from the server's /metrics, by (by, code)."""
    async with httpx.AsyncClient() as http:
        response = await http.get(
            f"{server.http_url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}
        )
    assert response.status_code == 200
    return {
        (sample.labels["by"], sample.labels["code"]): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "npc_server_closes_total"
    }


@VIOLATIONS
@pytest.mark.parametrize("after_hello", [True, False], ids=["after-hello", "before-hello"])
async def test_a_protocol_violation_is_the_servers_close_not_the_peers(
    frame: bytes, code: int, after_hello: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """wsproto fails the connection with 1002 or 1007 itself: the client gets that code,
    and the server records, logs and counts it as its own close (code set, no peer
    code), as for Hypercorn's 1009; a session waits for a resume, as after a 1009."""
    caplog.set_level("INFO", logger="npc_server.connections")
    config = replace(with_overrides(server_config(), metrics={"enabled": True}), api_key=API_KEY)
    async with running_server(config) as server:
        received, events = await closed_by(server, frame, after_hello)
        assert received == code
        await wait_until(lambda: any(isinstance(e, Closed) for e in events), what="closed")
        [closed] = [e for e in events if isinstance(e, Closed)]
        assert (closed.code, closed.peer_code) == (code, None)
        [line] = [r for r in caplog.records if r.getMessage() == "closed"]
        fields = line.fields  # type: ignore[attr-defined]
        assert (fields["code"], fields["peer_code"]) == (code, None)
        assert await closes_counted(server) == {("server", str(code)): 1.0}
        if after_hello:
            [session] = server.node.hub.sessions_of("alice")
            assert session.state.value == "detached"


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


async def test_an_h2c_upgrade_is_served_in_http1() -> None:
    """Fix 9: `Upgrade: h2c` gets the HTTP/1.1 answer, no 101 into HTTP/2, and the
    connection goes on in HTTP/1.1."""
    async with running_server() as server, raw_socket(server) as (reader, writer):
        for _ in range(2):
            writer.write(
                b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            )
            head = await read_head(reader)
            assert head.startswith(b"http/1.1 200"), head
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            assert b'"ok"' in await asyncio.wait_for(reader.readexactly(length), TIMEOUT)


async def test_the_http2_preface_is_a_505_and_the_connection_ends() -> None:
    """Fix 9: an HTTP/2 client with prior knowledge gets a 505 in HTTP/1.1 and the
    close (it was served HTTP/2); the server goes on serving others."""
    async with running_server() as server:
        async with raw_socket(server) as (reader, writer):
            writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            head = await read_head(reader)
            assert head.startswith(b"http/1.1 505") and b"connection: close" in head, head
            assert await until_eof(reader) == b""
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{server.http_url}/healthz")).status_code == 200


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


def fragment(opcode: int, payload: bytes = b"") -> bytes:
    """One client frame that does not end its message (FIN 0), masked with the key 0."""
    return bytes([opcode, 0x80 | len(payload)]) + b"\x00" * 4 + payload


# Fix 8: frames the app never gets as messages, sent far past the bucket at once.
UNSEEN_FLOODS = pytest.mark.parametrize(
    "flood",
    [
        client_frame(0x9, b"") * (4 * hypercorn_fixes.FRAME_BURST),
        client_frame(0xA, b"") * (4 * hypercorn_fixes.FRAME_BURST),
        fragment(0x2, b"\x81") + fragment(0x0) * (4 * hypercorn_fixes.FRAME_BURST),
    ],
    ids=["pings", "pongs", "a-message-that-never-ends"],
)


@UNSEEN_FLOODS
@pytest.mark.parametrize("after_hello", [True, False], ids=["after-hello", "before-hello"])
async def test_a_flood_of_frames_the_app_never_sees_closes_with_4029(
    flood: bytes, after_hello: bool
) -> None:
    """Pings, pongs or a message's endless empty fragments never reach the app's rate
    limit: past the bucket the socket is closed with 4029 (the server's close; a session
    waits for a resume), and another player is served meanwhile."""
    async with running_server() as server:
        received, events = await closed_by(server, flood, after_hello)
        assert received == CloseCode.RATE_LIMITED
        if after_hello:
            await wait_until(lambda: any(isinstance(e, Closed) for e in events), what="closed")
            [closed] = [e for e in events if isinstance(e, Closed)]
            assert (closed.code, closed.peer_code) == (CloseCode.RATE_LIMITED, None)
            [session] = server.node.hub.sessions_of("alice")
            assert session.state.value == "detached"
        async with connect(server.url) as other:
            await other.hello(server.token("bob"))
            await other.send({"t": "ping", "id": 1})
            assert (await other.expect("pong"))["id"] == 1


async def test_pings_within_the_bucket_are_answered_and_the_socket_stays() -> None:
    """A client's own WebSocket pings, as many as the bucket holds, each get a pong."""
    async with running_server() as server, upgraded_socket(server) as (reader, writer):
        await hello_raw(server, reader, writer)
        count = hypercorn_fixes.FRAME_BURST // 2
        writer.write(b"".join(client_frame(0x9, b"%d" % i) for i in range(count)))
        pongs = [await server_frame(reader) for _ in range(count)]
        assert pongs == [(0xA, b"%d" % i) for i in range(count)]
        writer.write(client_frame(0x2, msgpack.packb({"t": "ping", "id": 5})))
        opcode, payload = await server_frame(reader)
        assert (opcode, msgpack.unpackb(payload)["t"]) == (0x2, "pong")


async def test_a_peer_that_stopped_reading_pongs_is_dropped_without_an_error() -> None:
    """A client sends pings (within the bucket) and never reads the pongs: the server's
    writes stall, the kernel gives up on the peer (TCP_USER_TIMEOUT), and the session
    closes with nothing logged as an error (the autouse check fails the test on one)."""
    config = server_config(server={"send_buffer_bytes": 4096, "tcp_user_timeout_ms": 500})
    async with running_server(config) as server:
        events: list[NodeEvent] = []
        server.node.events.subscribe(events.append)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (server.host, server.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                f"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade"
                f"\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            assert (await read_head(reader)).startswith(b"http/1.1 101")
            await hello_raw(server, reader, writer)  # then never read again
            cast(asyncio.Transport, writer.transport).pause_reading()
            ping = client_frame(0x9, b"p" * 125)
            writer.write(ping * (hypercorn_fixes.FRAME_BURST - 10))  # 63 KB of pongs
            await writer.drain()
            await wait_until(
                lambda: any(isinstance(e, Closed) for e in events), what="closed", timeout=30
            )
        finally:
            writer.transport.abort()


async def test_a_write_the_kernel_timed_out_ends_the_connection_without_an_error() -> None:
    """Fix 2, the write side: with TCP_USER_TIMEOUT the kernel drops a peer that stopped
    reading and the `drain()` after Hypercorn's own write raises ETIMEDOUT, an OSError
    Hypercorn does not catch (it catches ConnectionError): the connection is closed as
    for a reset, and nothing escapes into Hypercorn's task group. The kernel's timeout is
    played by the writer; the TCPServer and its patched method are Hypercorn's."""
    hypercorn_fixes.install_fixes()

    class TimedOutWriter:
        def write(self, data: bytes) -> None:
            pass

        async def drain(self) -> None:
            raise TimeoutError(errno.ETIMEDOUT, "Connection timed out")

    handled: list[object] = []

    class Protocol:
        async def handle(self, event: object) -> None:
            handled.append(event)

    server = TCPServer.__new__(TCPServer)
    server.writer = TimedOutWriter()  # type: ignore[assignment]
    server.send_lock = asyncio.Lock()
    server.protocol = Protocol()  # type: ignore[assignment]
    await server.protocol_send(RawData(b"\x8a\x00"))  # a pong
    assert [type(event) for event in handled] == [HypercornClosed]


def test_a_large_message_read_in_parts_is_not_counted_as_unseen_frames() -> None:
    """Fix 8 counts whole frames: a 16 KiB message whose one frame arrives over many
    reads (wsproto hands over each part) costs nothing; its fragments as frames of
    their own (FIN 0) count one each; pings count."""
    server = Connection(ConnectionType.SERVER)
    payload = b"x" * 16_000
    frame = bytes([0x82, 0xFE]) + len(payload).to_bytes(2, "big") + b"\x00" * 4 + payload
    parts: list[object] = []
    for start in range(0, len(frame), 1448):  # one TCP segment a read
        server.receive_data(frame[start : start + 1448])
        parts.extend(server.events())
    assert len(parts) > 10 and sum(hypercorn_fixes._unseen(e) for e in parts) == 0
    fragmented = fragment(0x2, b"a") + fragment(0x0, b"b") + client_frame(0x0, b"c")
    server.receive_data(fragmented + client_frame(0x9, b""))
    assert [hypercorn_fixes._unseen(e) for e in server.events()] == [True, True, False, True]
