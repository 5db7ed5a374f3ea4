"""The client's address behind trusted proxies (`[server] trusted_proxy_hops`).

Behind nginx or HAProxy every connection comes from the proxy, so the
per-address limits (connects, watchers, refused requests, key guesses) would
apply to all players together, and logs would name the proxy. With
`trusted_proxy_hops = N`, the client's address is the Nth entry from the end of
`X-Forwarded-For` (each trusted proxy appends the address it saw: nginx's
`$proxy_add_x_forwarded_for`, HAProxy's `option forwardfor`). Entries before
those are the client's own words and are never used. A request with fewer
entries, or one that is not an IP address, keeps the socket's address.

Set it only when every connection comes through those proxies: a client that
can reach the server directly could name any address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable
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


class ForwardedFor:
    """ASGI middleware: `scope["client"]` set from `X-Forwarded-For` for HTTP and WebSocket."""

    def __init__(self, app: App, hops: int) -> None:
        self.app = app
        self.hops = hops

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] in ("http", "websocket"):
            address = forwarded_address(scope.get("headers", ()), self.hops)
            if address is not None:
                scope = {**scope, "client": (address, 0)}
        await self.app(scope, receive, send)
