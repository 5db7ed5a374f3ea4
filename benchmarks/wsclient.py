"""A lean WebSocket client on a raw asyncio protocol, for driving load.

Only what a load generator needs: the opening handshake (no extensions, so
no permessage-deflate), masked binary frames out, unmasked frames in, ping
answered, close recorded. One `data_received` call parses every frame it
got and stamps them all with one clock read, which keeps the client's cost
per frame a few microseconds, far below the server's.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import cast

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_HANDSHAKE = 16 * 1024

OnMessage = Callable[[bytes, float], None]


class HandshakeFailed(ConnectionError):
    """The server did not answer the upgrade with 101 and the right accept key."""


def _mask(payload: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte key, on integers: one pass in C instead of a byte loop."""
    n = len(payload)
    if n == 0:
        return payload
    keystream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(keystream, "little")).to_bytes(
        n, "little"
    )


def encode_frame(payload: bytes, opcode: int = OP_BINARY) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    key = os.urandom(4)
    return head + key + _mask(payload, key)


class WsClient(asyncio.Protocol):
    """One client connection; messages go to `on_message(data, received_at)`."""

    def __init__(self, on_message: OnMessage | None = None) -> None:
        self.on_message: OnMessage = on_message or (lambda data, at: None)
        self.transport: asyncio.Transport | None = None
        self.close_code: int | None = None
        self.reset = False
        self.upgraded = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self._key = base64.b64encode(os.urandom(16))
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._opened = False

    # --- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._opened and not self._parse_handshake():
            return
        self._parse_frames(time.perf_counter())

    def connection_lost(self, exc: Exception | None) -> None:
        self.reset = exc is not None and self.close_code is None
        if not self.upgraded.done():
            self.upgraded.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    # --- parsing ------------------------------------------------------------

    def _parse_handshake(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HANDSHAKE:
                self._fail("handshake response too long")
            return False
        head = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 4]
        status, *lines = head.split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
        accept = base64.b64encode(hashlib.sha1(self._key + GUID).digest()).decode()
        if " 101 " not in status + " " or headers.get("sec-websocket-accept") != accept:
            self._fail(f"expected 101 with the accept key, got {status!r}")
            return False
        self._opened = True
        self.upgraded.set_result(None)
        return True

    def _parse_frames(self, now: float) -> None:
        buf = self._buf
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if size - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])
            pos += head + n
            self._frame(b0 & 0x80, b0 & 0x0F, payload, now)
        del buf[:pos]

    def _frame(self, fin: int, opcode: int, payload: bytes, now: float) -> None:
        if opcode in (OP_BINARY, OP_TEXT, OP_CONT):
            if not fin:
                self._fragments.append(payload)
                return
            if self._fragments:
                payload = b"".join([*self._fragments, payload])
                self._fragments.clear()
            self.on_message(payload, now)
        elif opcode == OP_PING:
            self._write(encode_frame(payload, OP_PONG))
        elif opcode == OP_CLOSE:
            self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            self._write(encode_frame(payload[:2], OP_CLOSE))
            if self.transport is not None:
                self.transport.close()

    def _fail(self, reason: str) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(HandshakeFailed(reason))
        if self.transport is not None:
            self.transport.close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # --- API ----------------------------------------------------------------

    def send(self, payload: bytes) -> None:
        """Queue one binary message; never waits (load loops pace themselves)."""
        self._write(encode_frame(payload))

    def close(self, code: int = 1000) -> None:
        """Send a close frame and drop the connection without waiting for the answer."""
        self._write(encode_frame(struct.pack("!H", code), OP_CLOSE))
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        """Stop reading: the kernel buffers fill and the server's writes block."""
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def tcp_state(self) -> int | None:
        """The kernel's TCP state of this socket (1 = established), or None once gone."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None or sock.fileno() < 0:
            return None
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        return int(info[0])


async def connect(
    host: str,
    port: int,
    path: str = "/ws",
    on_message: OnMessage | None = None,
    *,
    rcvbuf: int = 0,
    timeout: float = 10.0,
) -> WsClient:
    """Open a WebSocket; `rcvbuf` > 0 shrinks the socket's receive buffer first."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if rcvbuf > 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    client: WsClient | None = None
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
            _, client = await loop.create_connection(lambda: WsClient(on_message), sock=sock)
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Key: {client._key.decode()}\r\n\r\n"
            )
            client._write(request.encode())
            await client.upgraded
    except BaseException:
        if client is not None:
            client.abort()  # the transport owns the socket now
        else:
            sock.close()
        raise
    return client
