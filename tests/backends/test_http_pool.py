"""The `openai` backend's own HTTP/1.1 transport over real loopback sockets.

Framing split at every byte, keep-alive reuse and its bounds, servers that
close or break HTTP mid-response, error statuses, TLS, and cancellation
dropping (never pooling) a connection.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from npc_server.backends.base import TextPiece
from npc_server.backends.openai import OpenAIBackend

from .openai_stub import EndlessScenario, EventEncoder, Hang, OpenAIStub, partial, reply
from .openai_support import MS, NPC, REQUEST, collect, text_of
from .raw_http import RawReply, RawServer, chunked

SSE = EventEncoder(include_usage=False).body(reply("Hi", " there", usage=False))
UNFINISHED = SSE[: SSE.index(b"\n\n", SSE.index(b'" there"')) + 2]  # role, "Hi", " there"
PIECES = [TextPiece("Hi"), TextPiece(" there")]
JSON = "content-type: application/json\r\n"

MakeRaw = Callable[..., OpenAIBackend]


@pytest.fixture
async def raw() -> AsyncIterator[RawServer]:
    async with RawServer() as server:
        yield server


@pytest.fixture
async def make_raw(raw: RawServer) -> AsyncIterator[MakeRaw]:
    """Backends pointed at the raw server (fake sleeps recorded in `sleeps`)."""
    backends: list[OpenAIBackend] = []

    def make(sleeps: list[float] | None = None, **settings: Any) -> OpenAIBackend:
        async def fake_sleep(delay: float) -> None:
            if sleeps is not None:
                sleeps.append(delay)

        merged = {"base_url": raw.base_url, "model": "m", "retries": 0, **settings}
        backends.append(OpenAIBackend(NPC, merged, sleep=fake_sleep))
        return backends[-1]

    yield make
    for backend in backends:
        await backend.aclose()


# Framing


async def test_a_response_split_at_every_byte_gives_the_same_pieces(
    raw: RawServer, make_raw: MakeRaw
) -> None:
    """Head, chunk-size line, data and CRLFs cut at each position: same pieces, one connection."""
    response = chunked(SSE)
    backend = make_raw()
    for cut in range(1, len(response)):
        raw.script(RawReply((response[:cut], response[cut:])))
        assert await collect(backend) == (PIECES, None), f"cut at {cut}"
    assert raw.connections_accepted == 1


async def test_a_sized_body_is_read_and_its_connection_reused(
    raw: RawServer, make_raw: MakeRaw
) -> None:
    """A content-length body streams the same pieces; the connection serves the next turn."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n"
    raw.script(*[RawReply((head % len(SSE), SSE[:7], SSE[7:]))] * 2)
    backend = make_raw()
    assert await collect(backend) == (PIECES, None)
    assert await collect(backend) == (PIECES, None)
    assert raw.connections_accepted == 1


async def test_a_body_ended_by_the_close_is_complete(raw: RawServer, make_raw: MakeRaw) -> None:
    """No length, no chunking: the body lasts until the server closes; the next turn reconnects."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"
    raw.script(RawReply((head, SSE), close=True), RawReply((chunked(SSE),)))
    backend = make_raw()
    assert await collect(backend) == (PIECES, None)
    assert await collect(backend) == (PIECES, None)
    assert raw.connections_accepted == 2


async def test_a_response_that_is_not_sse_ends_the_turn_unfinished(
    raw: RawServer, make_raw: MakeRaw
) -> None:
    """A 200 with a JSON completion (no `data:` events) is a reply that never finished."""
    body = b'{"choices":[{"message":{"content":"Hi"},"finish_reason":"stop"}]}'
    raw.script(RawReply((chunked(body, JSON),)))
    pieces, error = await collect(make_raw())
    assert pieces == []
    assert error is not None
    assert error.message == "the model server ended the reply without finishing it"


# Servers that fail


async def test_a_close_in_the_middle_of_a_chunk_is_a_cut(raw: RawServer, make_raw: MakeRaw) -> None:
    """The server closing (FIN) inside the body: text so far kept, then "cut mid-reply"."""
    response = chunked(SSE)
    cut = response.index(b'" there"')  # inside the third event
    raw.script(RawReply((response[:cut],), close=True))
    pieces, error = await collect(make_raw())
    assert pieces == [TextPiece("Hi")]
    assert error is not None
    assert (error.reason, error.message) == (
        "error",
        "the connection to the model server was cut mid-reply",
    )


async def test_a_close_before_any_answer_is_unreachable_and_retried(
    raw: RawServer, make_raw: MakeRaw
) -> None:
    """A new connection closed without a response is "could not reach", retried with backoff."""
    raw.script(RawReply((), close=True), RawReply((chunked(SSE),)))
    sleeps: list[float] = []
    assert await collect(make_raw(sleeps, retries=1)) == (PIECES, None)
    assert sleeps == [0.25]
    raw.script(RawReply((), close=True))
    _, error = await collect(make_raw())
    assert error is not None
    assert error.message == "could not reach the model server"


async def test_a_stale_keep_alive_connection_is_replaced_at_once(
    raw: RawServer, make_raw: MakeRaw
) -> None:
    """A reused connection the server drops unanswered is replaced without a retry's backoff."""
    raw.script(RawReply((chunked(SSE),)), RawReply((), close=True), RawReply((chunked(SSE),)))
    sleeps: list[float] = []
    backend = make_raw(sleeps, retries=2)
    assert await collect(backend) == (PIECES, None)
    assert await collect(backend) == (PIECES, None)
    assert (raw.connections_accepted, raw.requests, sleeps) == (2, 3, [])


async def test_after_a_server_restart_every_dead_idle_connection_is_skipped(
    raw: RawServer, make_raw: MakeRaw
) -> None:
    """Three pooled connections all dropped unanswered: the turn ends on a new one, no backoff."""
    raw.script(*[RawReply((chunked(SSE),))] * 3, *[RawReply((), close=True)] * 3)
    raw.script(RawReply((chunked(SSE),)))
    sleeps: list[float] = []
    backend = make_raw(sleeps, retries=2)
    results = await asyncio.gather(*(collect(backend) for _ in range(3)))
    assert results == [(PIECES, None)] * 3
    assert await collect(backend) == (PIECES, None)
    assert (raw.connections_accepted, raw.requests, sleeps) == (4, 7, [])


async def test_broken_http_framing_mid_body_is_a_cut(raw: RawServer, make_raw: MakeRaw) -> None:
    """A chunk size that is not hex, after some text, ends the turn as a cut connection."""
    response = chunked(UNFINISHED)
    raw.script(RawReply((response[: response.rindex(b"0\r\n\r\n")] + b"zz\r\n",), hang=True))
    pieces, error = await collect(make_raw())
    assert text_of(pieces) == "Hi there"
    assert error is not None
    assert error.message == "the connection to the model server was cut mid-reply"
    await raw.wait_closes(1)


@pytest.mark.parametrize(
    "parts",
    [
        (b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"a" * 70_000 + b"\r\n\r\n",),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", b"1" * 5000),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n", b"data:" + b"x" * 8000),
    ],
    ids=["head", "chunk-size-line", "chunk-overrun"],
)
async def test_oversize_or_overrun_framing_is_refused(
    parts: tuple[bytes, ...], raw: RawServer, make_raw: MakeRaw
) -> None:
    """An endless head or chunk-size line, or a chunk longer than its size, ends the turn."""
    raw.script(RawReply(parts, hang=True))
    pieces, error = await collect(make_raw())
    assert pieces == []
    assert error is not None
    assert error.message in (
        "could not reach the model server",
        "the connection to the model server was cut mid-reply",
    )
    await raw.wait_closes(1)  # the client dropped the connection


# Error statuses


async def test_error_statuses_read_any_framing_and_keep_the_connection(
    raw: RawServer, make_raw: MakeRaw
) -> None:
    """A 500 with a text body and a chunked 429 with Retry-After: the errors as the SDK gave."""
    text = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 11\r\n\r\nengine down"
    limited = chunked(b'{"error": {"message": "slow down"}}', JSON + "retry-after: 0.5\r\n")
    limited = limited.replace(b"200 OK", b"429 Too Many Requests")
    raw.script(RawReply((text,)), RawReply((limited,)), RawReply((chunked(SSE),)))
    sleeps: list[float] = []
    _, error = await collect(make_raw(sleeps, retries=0))
    assert error is not None
    assert error.message == "the model server answered HTTP 500: engine down"
    backend = make_raw(sleeps, retries=1)
    assert await collect(backend) == (PIECES, None)
    assert sleeps == [0.5]
    assert raw.connections_accepted == 2  # one per backend: error bodies were read to the end


async def test_an_error_without_a_body_names_the_reason(raw: RawServer, make_raw: MakeRaw) -> None:
    """An empty error body gives the status line's reason phrase."""
    raw.script(RawReply((b"HTTP/1.1 404 Not Here\r\ncontent-length: 0\r\n\r\n",)))
    _, error = await collect(make_raw())
    assert error is not None
    assert error.message == "the model server answered HTTP 404: Not Here"


async def test_an_error_body_nested_past_the_stack_is_its_text(
    raw: RawServer, make_raw: MakeRaw
) -> None:
    """A 502 whose body is JSON nested 100,000 deep (a broken proxy): the turn gets the
    error, not a RecursionError."""
    body = b"[" * 100_000 + b"]" * 100_000
    head = f"HTTP/1.1 502 Bad Gateway\r\ncontent-length: {len(body)}\r\n\r\n".encode()
    raw.script(RawReply((head + body,)))
    _, error = await collect(make_raw())
    assert error is not None
    assert error.message.startswith("the model server answered HTTP 502: [[[")


# The pool


async def test_concurrent_turns_keep_every_connection_for_the_next(
    stub: OpenAIStub,
) -> None:
    """150 turns at once (more than the SDK's 100 idle) reuse all 150 connections next time."""
    backend = OpenAIBackend(NPC, {"base_url": stub.base_url, "model": "m"})
    try:
        for _ in range(2):
            results = await asyncio.gather(*(collect(backend) for _ in range(150)))
            assert all(error is None for _, error in results)
        assert stub.connections_accepted == 150
        assert backend.pool.idle_connections == 150
    finally:
        await backend.aclose()
    await asyncio.wait_for(stub.no_connections(), 1.0)


async def test_max_connections_bounds_the_pool(stub: OpenAIStub) -> None:
    """With max_connections = 2, six turns at once take turns on two connections."""
    backend = OpenAIBackend(NPC, {"base_url": stub.base_url, "model": "m", "max_connections": 2})
    try:
        results = await asyncio.gather(*(collect(backend) for _ in range(6)))
    finally:
        await backend.aclose()
    assert all(text_of(pieces) == "Hello there!" for pieces, _ in results)
    assert stub.connections_accepted == 2


async def test_a_full_pool_times_out_after_the_connect_timeout(stub: OpenAIStub) -> None:
    """Every connection busy for connect_timeout_s: the waiting turn times out, unretried."""
    stub.script(partial(then=Hang()))
    settings = {"base_url": stub.base_url, "model": "m", "max_connections": 1}
    backend = OpenAIBackend(NPC, {**settings, "connect_timeout_s": 100 * MS})
    hung = asyncio.create_task(collect(backend))
    try:
        await asyncio.wait_for(stub.request_seen.wait(), 1.0)
        _, error = await collect(backend)
        assert error is not None
        assert (error.reason, error.message) == (
            "timeout",
            "the model server did not answer in time",
        )
        assert len(stub.requests) == 1
    finally:
        hung.cancel()
        await backend.aclose()


async def test_a_cancelled_stream_drops_its_connection(stub: OpenAIStub) -> None:
    """Cancelled mid-stream, the connection is closed, not pooled; the next turn opens one."""
    stub.script(EndlessScenario())
    backend = OpenAIBackend(NPC, {"base_url": stub.base_url, "model": "m"})
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in backend.generate(REQUEST):
            first.set()

    try:
        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(stub.requests[0].gone.wait(), 100 * MS)
        assert backend.pool.idle_connections == 0
        assert (await collect(backend))[1] is None
        assert stub.connections_accepted == 2
    finally:
        await backend.aclose()


# TLS


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (made with the openssl command)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    command += ["-keyout", str(key), "-out", str(cert)]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make a certificate: {exc}")
    return cert, key


async def test_an_https_base_url_streams_over_tls(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """https:// connects with TLS, verifying the server against the CAs httpx would trust."""
    import ssl

    cert, key = certificate
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    async with OpenAIStub(ssl_context=server_side) as stub:
        backend = OpenAIBackend(NPC, {"base_url": stub.base_url, "model": "m"})
        try:
            for _ in range(2):
                pieces, error = await collect(backend)
                assert (text_of(pieces), error) == ("Hello there!", None)
        finally:
            await backend.aclose()
        assert stub.base_url.startswith("https://")
        assert stub.connections_accepted == 1


async def test_an_untrusted_certificate_is_unreachable(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server whose certificate is not trusted is never sent the request."""
    import ssl

    cert, key = certificate
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    async with OpenAIStub(ssl_context=server_side) as stub:
        backend = OpenAIBackend(NPC, {"base_url": stub.base_url, "model": "m", "retries": 0})
        try:
            _, error = await collect(backend)
        finally:
            await backend.aclose()
        assert error is not None
        assert error.message == "could not reach the model server"
        assert stub.requests == []


# The request


async def test_the_request_carries_the_headers_the_sdk_sends(stub: OpenAIStub) -> None:
    """URL and headers are those of the SDK's own streamed request, content-length aside."""
    import openai

    client = openai.AsyncOpenAI(base_url=stub.base_url, api_key="not-needed", max_retries=0)
    backend = OpenAIBackend(NPC, {"base_url": stub.base_url, "model": "m"})
    try:
        create = client.chat.completions.with_streaming_response.create
        async with create(model="m", messages=[], stream=True) as response:
            await response.read()
        assert (await collect(backend))[1] is None
    finally:
        await client.close()
        await backend.aclose()
    by_sdk, ours = stub.requests
    assert (ours.method, ours.path) == (by_sdk.method, by_sdk.path)
    drop = {"content-length", "x-stainless-read-timeout"}  # the SDK's default timeout is 600 s
    assert {k: v for k, v in ours.headers.items() if k not in drop} == {
        k: v for k, v in by_sdk.headers.items() if k not in drop
    }
    assert ours.headers["x-stainless-read-timeout"] == "120.0"  # total_timeout_s, as before


async def test_idle_connections_expire_after_keepalive_s(stub: OpenAIStub) -> None:
    """A connection idle longer than keepalive_s is closed, and the next request opens one."""
    from npc_server.backends.http1 import request_prefix, with_length
    from npc_server.backends.http_pool import ConnectionPool, Origin

    origin = Origin.parse(stub.base_url)
    head = request_prefix("POST", "/v1/chat/completions", [(b"host", origin.host_header.encode())])
    request = with_length(head, b'{"model": "m", "stream": true}')
    for keepalive_s, connections in ((60.0, 1), (0.0, 2)):
        stub.connections_accepted = 0
        pool = ConnectionPool(
            origin, max_connections=4, connect_timeout_s=1.0, keepalive_s=keepalive_s
        )
        for _ in range(2):
            response = await pool.request(request)
            assert response.head.status == 200
            await response.read_all(1 << 20)
            response.close()
        await pool.aclose()
        assert stub.connections_accepted == connections
