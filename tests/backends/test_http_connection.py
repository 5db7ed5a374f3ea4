"""`H1Connection`'s listener and sink: body bytes handed over inside `data_received`.

Driven without sockets: a transport that only records, and the bytes a server
would send fed straight into the protocol.
"""

from __future__ import annotations

import asyncio

import pytest

from npc_server.backends.http_connection import HIGH_WATER, BodyCut, H1Connection

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Transport:
    """Enough of a transport for one request: writes and reading pauses recorded."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class Recorder:
    """A listener and a sink that note what they were given; the sink takes while `taking`."""

    def __init__(self, taking: bool = True) -> None:
        self.taking = taking
        self.offered: list[bytes] = []
        self.woken = 0

    def listener(self) -> None:
        self.woken += 1

    def sink(self, data: bytes) -> bool:
        self.offered.append(data)
        return self.taking


async def streaming(recorder: Recorder) -> tuple[H1Connection, Transport]:
    """A connection whose response head is in, listened to by `recorder`."""
    conn = H1Connection()
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.send_nowait(b"POST / HTTP/1.1\r\n\r\n")
    conn.data_received(HEAD)
    assert (await conn.receive_head(reused=False)).status == 200
    conn.listen(recorder.listener, recorder.sink)
    return conn, transport


async def test_a_sink_takes_each_chunk_as_it_arrives_and_hears_the_end() -> None:
    """Taken bytes are not buffered, and only the body's end wakes the listener."""
    recorder = Recorder()
    conn, _ = await streaming(recorder)
    conn.data_received(chunk(b"data: 1\n\n"))
    conn.data_received(chunk(b"data: 2\n\n") + chunk(b"data: 3\n\n"))
    assert recorder.offered == [b"data: 1\n\n", b"data: 2\n\ndata: 3\n\n"]
    assert recorder.woken == 0
    assert conn.read_nowait() == b""
    conn.data_received(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    assert recorder.offered[-1] == b"data: [DONE]\n\n"
    assert recorder.woken == 1
    assert conn.read_nowait() is None


async def test_bytes_a_sink_declines_are_buffered_and_read_in_order() -> None:
    """A declined read stays buffered (the listener is told); later bytes queue behind
    it without being offered, so reads keep the body's order."""
    recorder = Recorder(taking=False)
    conn, _ = await streaming(recorder)
    conn.data_received(chunk(b"data: 1\n\n"))
    recorder.taking = True
    conn.data_received(chunk(b"data: 2\n\n"))
    assert recorder.offered == [b"data: 1\n\n"]
    assert recorder.woken == 2
    assert conn.read_nowait() == b"data: 1\n\ndata: 2\n\n"
    conn.data_received(chunk(b"data: 3\n\n"))
    assert recorder.offered == [b"data: 1\n\n", b"data: 3\n\n"]
    assert conn.read_nowait() == b""


async def test_declined_bytes_still_stop_the_socket_past_the_high_water_mark() -> None:
    recorder = Recorder(taking=False)
    conn, transport = await streaming(recorder)
    conn.data_received(chunk(b"x" * (HIGH_WATER + 1)))
    assert transport.paused
    assert len(conn.read_nowait() or b"") == HIGH_WATER + 1
    assert not transport.paused


async def test_a_waiter_is_woken_by_bytes_a_sink_took() -> None:
    recorder = Recorder()
    conn, _ = await streaming(recorder)
    waiter = conn.readable()
    conn.data_received(chunk(b"data: 1\n\n"))
    await asyncio.wait_for(waiter, 1.0)
    assert recorder.offered == [b"data: 1\n\n"]


async def test_broken_framing_after_some_body_is_buffered_then_a_cut() -> None:
    """Body bytes followed by bad framing in one read are not offered: read, then cut."""
    recorder = Recorder()
    conn, _ = await streaming(recorder)
    conn.data_received(chunk(b"data: 1\n\n") + b"zz\r\n")
    assert recorder.offered == []
    assert recorder.woken == 1
    assert conn.read_nowait() == b"data: 1\n\n"
    with pytest.raises(BodyCut):
        conn.read_nowait()


async def test_a_new_request_forgets_the_sink() -> None:
    recorder = Recorder()
    conn, _ = await streaming(recorder)
    conn.data_received(b"0\r\n\r\n")
    assert conn.read_nowait() is None
    conn.send_nowait(b"POST / HTTP/1.1\r\n\r\n")
    conn.data_received(HEAD + chunk(b"data: 1\n\n"))
    assert recorder.offered == []
    assert conn.read_nowait() == b"data: 1\n\n"
