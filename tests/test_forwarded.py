"""The client's address behind trusted proxies (npc_server/forwarded.py)."""

from __future__ import annotations

from typing import Any

import pytest
import websockets

from npc_server.forwarded import ForwardedFor, forwarded_address
from npc_server.protocol.codes import CloseCode
from tests.support.client import connect
from tests.support.server import RunningServer, running_server, server_config


def xff(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"game.example")] + [(b"x-forwarded-for", v.encode()) for v in values]


@pytest.mark.parametrize(
    ("headers", "hops", "address"),
    [
        (xff("203.0.113.7"), 1, "203.0.113.7"),
        (xff("6.6.6.6, 203.0.113.7"), 1, "203.0.113.7"),  # the client wrote the first
        (xff("6.6.6.6", "203.0.113.7"), 1, "203.0.113.7"),  # HAProxy adds a header line
        (xff("6.6.6.6, 203.0.113.7, 10.0.0.2"), 2, "203.0.113.7"),  # two proxies
        (xff(" 2001:db8::1 "), 1, "2001:db8::1"),
        (xff("203.0.113.7"), 2, None),  # fewer entries than proxies: not through them all
        (xff("203.0.113.7"), 0, None),  # off
        (xff("unknown"), 1, None),  # nginx's placeholder, or garbage: the socket's
        (xff("203.0.113.7:4711"), 1, None),
        ([(b"X-Forwarded-For", b"203.0.113.7")], 1, "203.0.113.7"),
        (xff("\xe9"), 1, None),
        ([(b"host", b"x")], 1, None),
    ],
)
def test_the_address_is_the_one_the_trusted_proxies_saw(
    headers: list[tuple[bytes, bytes]], hops: int, address: str | None
) -> None:
    assert forwarded_address(headers, hops) == address


class Recorder:
    """An ASGI app that keeps the `client` of each scope it is called with."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.seen.append(scope.get("client"))


async def receive() -> Any:
    return {}


async def send(message: Any) -> None:
    pass


async def test_the_middleware_sets_the_client_for_http_and_websocket_only() -> None:
    app = Recorder()
    middleware = ForwardedFor(app, hops=1, proxies=["10.0.0.0/24", "::1"])
    for kind in ("http", "websocket"):
        scope = {"type": kind, "client": ("10.0.0.1", 5000), "headers": xff("203.0.113.7")}
        await middleware(scope, receive, send)
        assert scope["client"] == ("10.0.0.1", 5000)  # the server's own scope is left alone
    await middleware({"type": "lifespan"}, receive, send)
    no_header = {"type": "http", "client": ("10.0.0.1", 5000), "headers": []}
    await middleware(no_header, receive, send)
    assert app.seen == [("203.0.113.7", 0), ("203.0.113.7", 0), None, ("10.0.0.1", 5000)]


async def test_a_peer_that_is_no_trusted_proxy_keeps_its_own_address() -> None:
    """A client that reaches the server directly cannot name another address: the header
    is believed only from the proxies listed (a Unix socket's peer is none of them)."""
    app = Recorder()
    middleware = ForwardedFor(app, hops=1, proxies=["10.0.0.0/24"])
    for peer in (("198.51.100.4", 5000), ("10.0.1.1", 5000), ("/run/npc.sock", 0), None):
        scope = {"type": "websocket", "client": peer, "headers": xff("203.0.113.7")}
        await middleware(scope, receive, send)
    assert app.seen == [("198.51.100.4", 5000), ("10.0.1.1", 5000), ("/run/npc.sock", 0), None]


LIMITED = {"connects_per_s_address": 0.01, "connects_burst_address": 2}


async def connects_from(server: RunningServer, forwarded_for: str) -> list[int | None]:
    """Three WebSocket connects that a proxy says come from `forwarded_for`: each one's
    close code after a hello (None: welcomed)."""
    codes: list[int | None] = []
    for i in range(3):
        headers = {"X-Forwarded-For": f"6.6.6.6, {forwarded_for}"}
        async with connect(server.url, additional_headers=headers) as client:
            try:
                await client.send({"t": "hello", "token": server.token(f"p{forwarded_for}{i}")})
                frame = await client.recv()
                codes.append(None if frame["t"] == "welcome" else -1)
            except websockets.ConnectionClosed:
                codes.append(client.ws.close_code)
    return codes


async def test_behind_one_trusted_proxy_each_client_address_has_its_own_connect_limit() -> None:
    """With trusted_proxy_hops = 1 the per-address connect limit counts the address the
    proxy appended (never the one the client wrote first): the third connect from one
    address is refused 4029, and another address still connects."""
    config = server_config(limits=LIMITED, server={"trusted_proxy_hops": 1})
    async with running_server(config) as server:
        assert await connects_from(server, "203.0.113.7") == [None, None, CloseCode.RATE_LIMITED]
        assert await connects_from(server, "203.0.113.8") == [None, None, CloseCode.RATE_LIMITED]


async def test_from_a_peer_that_is_no_trusted_proxy_the_header_is_ignored() -> None:
    """With hops set but the proxies elsewhere (the test connects from loopback), every
    connect keeps the socket's address: one limit for all, whatever the header says."""
    server = {"trusted_proxy_hops": 1, "trusted_proxies": ["10.9.9.9"]}
    async with running_server(server_config(limits=LIMITED, server=server)) as running:
        assert await connects_from(running, "203.0.113.7") == [None, None, CloseCode.RATE_LIMITED]
        assert await connects_from(running, "203.0.113.8") == [CloseCode.RATE_LIMITED] * 3


async def test_without_trusted_proxies_the_header_is_ignored() -> None:
    """By default every connect from the socket's address shares its limit, whatever
    X-Forwarded-For says."""
    async with running_server(server_config(limits=LIMITED)) as server:
        assert await connects_from(server, "203.0.113.7") == [None, None, CloseCode.RATE_LIMITED]
        assert await connects_from(server, "203.0.113.8") == [CloseCode.RATE_LIMITED] * 3
