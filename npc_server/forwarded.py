"""The client's address behind trusted proxies (`[server] trusted_proxy_hops`).

Behind nginx or HAProxy every connection comes from the proxy, so the
per-address limits (connects, watchers, refused requests, key guesses) would
apply to all players together, and logs would name the proxy. With
`trusted_proxy_hops = N`, a connection whose peer is one of `trusted_proxies`
(addresses or networks; loopback by default, where the recipes' proxy runs)
takes the client's address from the Nth entry from the end of
`X-Forwarded-For` (each proxy appends the address it saw: nginx's
`$proxy_add_x_forwarded_for`, HAProxy's `option forwardfor`). Entries before
those are the client's own words and are never used. A connection from any
other peer keeps its own address whatever it sends, so a client that reaches
the server directly cannot name another; so does a request with fewer
entries, or one that is not an IP address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

MAX_HOPS = 10

Scope = dict[str, Any]
App = Callable[..., Awaitable[None]]  # an ASGI app (Quart's `asgi_app`, typed its own way)


def forwarded_address(headers: Iterable[tuple[bytes, bytes]], hops: int) -> str | None:
    """The address `hops` trusted proxies say the client has, or None (keep the socket's)."""
    entries: list[bytes] = []
    for name, value in headers:
        if name.lower() == b"x-forwarded-for":
            entries.extend(value.split(b","))
    if hops <= 0 or len(entries) < hops:
        return None
    try:
        return str(ipaddress.ip_address(entries[-hops].strip().decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        return None


def networks(proxies: Sequence[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """`trusted_proxies` as networks (an address is a network of one); ValueError if not."""
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def _peer_trusted(scope: Scope, trusted: Sequence[Any]) -> bool:
    peer = scope.get("client")
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:  # a Unix socket's peer, or none the server could name
        return False
    return any(address in network for network in trusted)


class ForwardedFor:
    """ASGI middleware: `scope["client"]` set from `X-Forwarded-For` for HTTP and WebSocket
    connections from a trusted proxy."""

    def __init__(self, app: App, hops: int, proxies: Sequence[str] = ("127.0.0.1", "::1")) -> None:
        self.app = app
        self.hops = hops
        self.trusted = networks(proxies)

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] in ("http", "websocket") and _peer_trusted(scope, self.trusted):
            address = forwarded_address(scope.get("headers", ()), self.hops)
            if address is not None:
                scope = {**scope, "client": (address, 0)}
        await self.app(scope, receive, send)
