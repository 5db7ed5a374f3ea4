"""The game server's trusted context in a cluster: a copy in Redis, and every node's own.

A turn reads the trusted context synchronously from its node's `TrustedContexts`
(the node that runs the turn, or the node of the player who said something, which
sends it with a forwarded say). So every node keeps its own copy current:

- `POST /api/context` sets it on the node that got it, writes it to Redis
  (`npc:trusted:<scope>`, a hash of `*` or an NPC id to msgpack data, kept
  `TRUSTED_TTL` after the last post) and sends it to every live node
  (`scatter.gather`), which sets it as its own (validated as the API validates it);
- a node that may have missed it (it started later) reads the player's copy when a
  session of theirs attaches there (`SessionAttached`: new, resumed or handed
  over), the audience's copy before the first say of a conversation it runs for
  another node's or its own claim, and every room's copy when it starts
  (`npc:trusted:rooms` lists them). A node keeps a player's copy when their last
  session there ends (within `TrustedContexts.max_scopes`): a conversation of
  theirs may go on there.

What a node reads from Redis is validated like a post; a copy that a newer post
replaced on this node while the read was under way is not applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgpack

from npc_server.api_schema import ApiError, Body
from npc_server.cluster.leases import PREFIX, TIMEOUT
from npc_server.contexts import ALL_NPCS
from npc_server.events import NodeEvent, SessionAttached

if TYPE_CHECKING:
    from npc_server.node import Node

log = logging.getLogger(__name__)

TRUSTED_TTL = 24 * 3600.0
ROOMS_KEY = f"{PREFIX}trusted:rooms"
MAX_ROOMS_LOADED = 10_000  # as many scopes as one node keeps (`TrustedContexts.max_scopes`)


def trusted_key(scope: str) -> str:
    return f"{PREFIX}trusted:{scope}"


def scope_audience(scope: str) -> dict[str, str]:
    """`player:<id>` or `room:<id>` as the API's body field (`{"player": id}`); else {}."""
    kind, _, name = scope.partition(":")
    return {kind: name} if kind in ("player", "room") and name else {}


class TrustedCopies:
    """This node's part in keeping every node's trusted contexts current."""

    def __init__(self, node: Node, client: Any) -> None:
        self.node = node
        self.client = client
        self._versions: dict[str, int] = {}  # scope -> sets here; a read checks it did not move
        self._tasks: set[asyncio.Task[None]] = set()
        self.rejected = 0
        self._unsubscribe = node.events.subscribe(self._on_event)

    async def start(self) -> None:
        """Read every room's copy (a node that starts has none of them)."""
        try:
            async with asyncio.timeout(TIMEOUT):
                rooms = await self.client.srandmember(ROOMS_KEY, MAX_ROOMS_LOADED)
        except Exception as exc:
            log.warning("the rooms' trusted contexts were not read: %s", exc)
            return
        names = [r.decode(errors="replace") for r in rooms or () if isinstance(r, bytes)]
        found = await asyncio.gather(*(self.load(f"room:{name}") for name in names))
        gone = [name for name, there in zip(names, found, strict=True) if not there]
        if gone:  # their copies lapsed: the list need not name them
            with contextlib.suppress(Exception):
                async with asyncio.timeout(TIMEOUT):
                    await self.client.srem(ROOMS_KEY, *gone)

    async def aclose(self) -> None:
        self._unsubscribe()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def set_nowait(self, scope: str, npc: str | None, data: Mapping[str, Any]) -> bool:
        """Set on this node (False: over the scope's byte budget)."""
        self._versions[scope] = self._versions.get(scope, 0) + 1
        if len(self._versions) > 2 * self.node.contexts.trusted.max_scopes:
            del self._versions[next(iter(self._versions))]
        size = len(msgpack.packb(data))
        return self.node.contexts.trusted.set_nowait(scope, npc, data, size)

    async def save(self, scope: str, npc: str | None, data: Mapping[str, Any]) -> None:
        """Write the copy in Redis; raises if Redis does not answer."""
        key = trusted_key(scope)
        ttl = int(TRUSTED_TTL * 1000)
        async with asyncio.timeout(TIMEOUT):
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(key, ALL_NPCS if npc is None else npc, msgpack.packb(data))
            pipe.pexpire(key, ttl)
            if scope.startswith("room:"):
                pipe.sadd(ROOMS_KEY, scope.removeprefix("room:"))
                pipe.pexpire(ROOMS_KEY, ttl)
            await pipe.execute()

    async def load(self, scope: str) -> bool:
        """Set this node's copy of `scope` from Redis (unless a post set it meanwhile);
        whether Redis has one (True if it cannot say)."""
        before = self._versions.get(scope, 0)
        try:
            async with asyncio.timeout(TIMEOUT):
                fields = await self.client.hgetall(trusted_key(scope))
        except Exception as exc:
            log.warning("the trusted context of %s was not read: %s", scope, exc)
            return True
        if not isinstance(fields, dict) or self._versions.get(scope, 0) != before:
            return True
        for raw_npc, raw in fields.items():
            self._apply(scope, raw_npc, raw)
        return bool(fields)

    def _apply(self, scope: str, raw_npc: Any, raw: Any) -> None:
        try:
            npc = raw_npc.decode() if isinstance(raw_npc, bytes) else None
            data = msgpack.unpackb(raw) if isinstance(raw, bytes) else None
            scope, npc, data = self.check(scope, None if npc == ALL_NPCS else npc, data)
        except (ApiError, ValueError, TypeError, msgpack.UnpackException) as exc:
            self.rejected += 1
            log.warning("dropped a trusted context of %s in Redis: %s", scope, exc)
            return
        if not self.node.contexts.trusted.set_nowait(scope, npc, data, len(raw)):
            log.warning("the trusted context of %s in Redis is over the budget here", scope)

    def check(self, scope: Any, npc: Any, data: Any) -> tuple[str, str | None, dict[str, Any]]:
        """A scope, NPC and data from another node or Redis, validated as a post's body
        is (`ApiError` saying what is wrong)."""
        audience = scope_audience(scope) if isinstance(scope, str) else {}
        if not audience:
            raise ApiError(400, "invalid", "a trusted context names no player or room")
        body = Body({**audience, "data": data, **({} if npc is None else {"npc": npc})})
        body.audience()
        checked_npc = body.npc(self.node, required=False)
        checked = body.context_data(self.node.config.limits.protocol_limits())
        body.done()
        return scope, checked_npc, checked

    def _on_event(self, event: NodeEvent) -> None:
        if isinstance(event, SessionAttached):
            self._spawn(self.load(f"player:{event.player}"))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
