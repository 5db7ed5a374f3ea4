"""`GET /ops/events`: the node's events (`events.py`) as server-sent events, for operators.

`Authorization: Bearer <key>` with the key from `NPC_SERVER_API_KEY`,
compared in constant time. Without a key set the route does not exist (404);
a missing or wrong key is 401. Each event is `event: <kind>` and `data:` its
fields as JSON (`event_fields`): connects, sessions, closes with their codes,
auth failures, limits, turns started and ended with their timings, backend
errors, drain. The first event is `feed` (the node's id and version). No replay: a feed that falls `MAX_QUEUED` events behind is
closed, like a slow socket.

`ApiKeyGate` is the one check of that key for every route that takes it
(`/ops/events`, `/api/`, `/metrics` on the main port): a wrong key costs its
address, a right one never does.
"""

from __future__ import annotations

import enum
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


# What a refused address is told to wait (its bucket refills at connects_per_s_address).
RETRY_AFTER_S = 5


class KeyCheck(enum.Enum):
    """What `ApiKeyGate.check` found: each route answers it in its own format."""

    GOOD = "good"
    WRONG = "wrong"  # 401
    LIMITED = "limited"  # 429 with Retry-After: too many wrong keys from this address


class ApiKeyGate:
    """`Authorization: Bearer <NPC_SERVER_API_KEY>`, checked in constant time, where
    guessing costs: a wrong (or missing) key takes from its address's connect bucket
    (`node.address_connects`, shared with WebSocket connects and refused watch
    requests), and once that is empty the address is LIMITED until it refills. A good
    key takes nothing and is never refused, so an operator or the game server is not
    locked out by a guesser, from its own address or another."""

    def __init__(self, node: Node, key: str) -> None:
        self.node = node
        self._key = key

    def check(self, authorization: str | None, address: str) -> KeyCheck:
        if bearer_matches(authorization, self._key):
            return KeyCheck.GOOD
        if not self.node.address_connects.allow_nowait(address):
            self.node.events.emit(Limited("connects_address", None))
            return KeyCheck.LIMITED
        return KeyCheck.WRONG


class OpsService:
    """Admission to `/ops/events`."""

    def __init__(self, node: Node, gate: ApiKeyGate | None) -> None:
        self.node = node
        self._gate = gate

    def open(self, authorization: str | None, address: str) -> Response:
        """The feed, or 404 (no key configured), 401 (missing or wrong key) or 429 (too
        many wrong keys from this address)."""
        if self._gate is None:
            return refusal(404, "not found")
        verdict = self._gate.check(authorization, address)
        if verdict is KeyCheck.LIMITED:
            headers = {"Retry-After": str(RETRY_AFTER_S)}
            return refusal(429, "too many refused requests from this address", headers)
        if verdict is KeyCheck.WRONG:
            reason = "a valid API key is needed as 'Authorization: Bearer <key>'"
            self.node.events.emit(AuthFailed("ops", address, int(CloseCode.AUTH_FAILED), reason))
            return refusal(401, reason, {"WWW-Authenticate": 'Bearer realm="ops"'})
        return sse_response(SseBody(lambda: self._feed(address)))

    def _feed(self, address: str) -> OpsFeed:
        # Connected as the stream starts: a client gone before has no unpaired line.
        self.node.events.emit(Connected("ops", address))
        return OpsFeed(self.node, address)
