"""Requests to the game's own server: signed JSON POSTs over HTTP/1.1.

npc-server needs no HTTP client library for this: h11 (which Hypercorn already
uses) frames the messages over an asyncio connection, one connection per
request. Every request is signed like a Stripe webhook, so the game server
can check it came from npc-server and is fresh:

    X-NPC-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">

The signature covers the time and the body, not the method or the path: each
body says what it is for (a webhook's `"type": "action"`, a tool call's
`"tool": "<name>"`), and the game server checks that against the path it came
to, or a signed request replays to another path within the tolerance.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from npc_server.redaction import redacted_reason

SIGNATURE_HEADER = "X-NPC-Signature"
MAX_ANSWER_BYTES = 64 * 1024
USER_AGENT = "npc-server"


class GameHttpError(Exception):
    """The game server could not be reached, or its answer was not HTTP; safe to log."""


class UnusableUrl(GameHttpError):
    """The URL itself cannot be used (a port out of range, an unclosed `[`, no host):
    a failed request like any other, but one that no retry will change."""


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The `X-NPC-Signature` value for `body` sent at `timestamp` (unix seconds)."""
    signed = str(timestamp).encode() + b"." + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    secret: str, header: str, body: bytes, now: float, tolerance_s: float = 300.0
) -> bool:
    """Whether `header` signs `body` with `secret` within `tolerance_s` of `now`.

    What a game server does with each webhook (examples/game_server does the same);
    it then checks that the body is meant for the path (see the module's text).
    """
    fields = dict(part.partition("=")[::2] for part in header.split(","))
    try:
        timestamp = int(fields.get("t", ""))
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = signature(secret, body, timestamp).partition(",v1=")[2]
    # As bytes: compare_digest refuses str that is not ASCII (a TypeError, not False).
    return hmac.compare_digest(expected.encode(), fields.get("v1", "").encode())


async def post_json(
    url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
) -> HttpAnswer:
    """POST `body` to `url`; the status and body (at most 64 KiB) within `timeout_s`.

    Raises `GameHttpError` for anything but an HTTP answer (`UnusableUrl` when
    `url` cannot be used at all); cancelling closes the connection, so the game
    server sees the request go away.
    """
    where = _where(url)
    try:
        async with asyncio.timeout(timeout_s):
            context = ssl.create_default_context() if where.secure else None
            reader, writer = await asyncio.open_connection(where.host, where.port, ssl=context)
            try:
                return await _exchange(reader, writer, where.netloc, where.target, body, headers)
            finally:
                writer.close()
    except TimeoutError:
        raise GameHttpError(f"no answer within {timeout_s:g} s") from None
    except (OSError, h11.ProtocolError) as exc:
        raise GameHttpError(f"{type(exc).__name__}: {exc}") from None
    except ValueError as exc:  # a host name the resolver refuses, past `_where`'s checks
        raise UnusableUrl(f"unusable URL: {exc}") from None


def url_problem(url: str) -> str:
    """Why `post_json` cannot use `url` ("": it can), found without connecting: what
    the settings' rule for `[game] url` can refuse at start-up; it quotes nothing of a
    password the URL holds (`redacted_reason`)."""
    try:
        _where(url)
    except UnusableUrl as exc:
        unusable = "unusable URL: "
        return unusable + redacted_reason(url, str(exc).removeprefix(unusable))
    return ""


@dataclass(frozen=True, slots=True)
class _Where:
    secure: bool
    host: str
    port: int
    netloc: str
    target: str


def _where(url: str) -> _Where:
    """Where `url` points, or `UnusableUrl`: urlsplit and its `port` raise ValueError on
    what the settings let through, and a caller must see a failed request, not a crash."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnusableUrl(f"unusable URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnusableUrl("unusable URL: not http(s)://<host>")
    if port == 0:  # `port or 80` would quietly send it to port 80
        raise UnusableUrl("unusable URL: port 0")
    try:  # what the resolver refuses: a label over 63 characters, an empty one, a NUL
        parts.hostname.encode("idna")
        if "\x00" in parts.hostname:
            raise UnicodeError("a NUL in the host")
    except UnicodeError as exc:
        raise UnusableUrl(f"unusable URL: {exc}") from None
    secure = parts.scheme == "https"
    if port is None:
        port = 443 if secure else 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # Host is the host and port only: a `user:pw@` in the URL is no part of it.
    netloc = parts.netloc.rpartition("@")[2]
    return _Where(secure, parts.hostname, port, netloc, target)


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    netloc: str,
    target: str,
    body: bytes,
    headers: Mapping[str, str],
) -> HttpAnswer:
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="POST",
        target=target,
        headers=[
            ("Host", netloc),
            ("User-Agent", USER_AGENT),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *headers.items(),
        ],
    )
    writer.write(
        conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
    )
    await writer.drain()
    status = 0
    received = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            received += event.data
            if len(received) > MAX_ANSWER_BYTES:
                raise GameHttpError(f"the answer is over {MAX_ANSWER_BYTES} bytes")
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    if not status:
        raise GameHttpError("the connection closed before an answer")
    return HttpAnswer(status, bytes(received))
