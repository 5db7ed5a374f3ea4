"""`GET /ops/events`: the node's events (`events.py`) as server-sent events, for operators.

`Authorization: Bearer <key>` with the key from `NPC_SERVER_API_KEY`,
compared in constant time. Without a key set the route does not exist (404);
a missing or wrong key is 401. Each event is `event: <kind>` and `data:` its
fields as JSON (`event_fields`): connects, sessions, closes with their codes,
auth failures, limits, turns started and ended with their timings, backend
errors, drain. The first event is `feed` (the node's id and version). No replay: a feed that falls `MAX_QUEUED` events behind is
closed, like a slow socket.
"""

from __future__ import annotations

import hmac
from collections import deque
from collections.abc import Callable

import orjson
from quart import Response

from npc_server import __version__
from npc_server.events import AuthFailed, Connected, Limited, NodeEvent, event_fields
from npc_server.node import Node
from npc_server.protocol.codes import CloseCode
from npc_server.transports.sse import SseBody, SseStream, format_event, refusal, sse_response

MAX_QUEUED = 1024
KEEPALIVE_S = 15.0


def bearer_matches(header: str | None, key: str) -> bool:
    """Whether an `Authorization` header carries `key` as a Bearer token (constant time)."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), key.encode())


class OpsFeed(SseStream):
    """One operator's stream of node events."""

    def __init__(self, node: Node, address: str) -> None:
        super().__init__(node, transport="ops", address=address, keepalive=KEEPALIVE_S)
        hello = {"node": node.node_id, "version": __version__}
        self._queued: deque[bytes] = deque([format_event("feed", orjson.dumps(hello))])
        self._unsubscribe: Callable[[], None] = node.events.subscribe(self._on_event)

    def _on_event(self, event: NodeEvent) -> None:
        if self.closing.is_set():
            return
        if len(self._queued) >= MAX_QUEUED:
            self.request_close(CloseCode.SLOW_CONSUMER, f"over {MAX_QUEUED} events behind")
            return
        self._queued.append(format_event(event.KIND, orjson.dumps(event_fields(event))))
        self.ready.set()

    def take_nowait(self) -> bytes:
        data = b"".join(self._queued)
        self._queued.clear()
        return data

    def release(self) -> None:
        self._unsubscribe()  # first: this feed's own `closed` goes to the others only
        super().release()


RETRY_AFTER_S = 5


class OpsService:
    """Admission to `/ops/events`."""

    def __init__(self, node: Node, key: str | None) -> None:
        self.node = node
        self._key = key

    def open(self, authorization: str | None, address: str) -> Response:
        """The feed, or 404 (no key configured) or 401 (missing or wrong key)."""
        if self._key is None:
            return refusal(404, "not found")
        if not bearer_matches(authorization, self._key):
            # A wrong key takes from the address's connect bucket: guessing keys costs.
            if not self.node.address_connects.allow_nowait(address):
                self.node.events.emit(Limited("connects_address", None))
                headers = {"Retry-After": str(RETRY_AFTER_S)}
                return refusal(429, "too many refused requests from this address", headers)
            reason = "a valid API key is needed as 'Authorization: Bearer <key>'"
            self.node.events.emit(AuthFailed("ops", address, int(CloseCode.AUTH_FAILED), reason))
            return refusal(401, reason, {"WWW-Authenticate": 'Bearer realm="ops"'})
        return sse_response(SseBody(lambda: self._feed(address)))

    def _feed(self, address: str) -> OpsFeed:
        # Connected as the stream starts: a client gone before has no unpaired line.
        self.node.events.emit(Connected("ops", address))
        return OpsFeed(self.node, address)
