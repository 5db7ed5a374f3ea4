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

Every post gets a version from Redis (`SAVE_SCRIPT`: Redis's clock in µs, kept
rising by `npc:trusted-clock`), written beside the copy in `npc:trusted-v:<scope>`
(the same fields, to versions) by the script that writes the copy, and each copy
carries it: a node applies a copy only if it is newer than the one it has, so two
posts to two nodes at once, or a copy delayed on its way, leave every node with the
later one. The posting node sets its own copy only once Redis has it: a post that
Redis did not take (503) changes no node. What a node reads from Redis is validated
like a post; a copy without a version in Redis (written by an earlier release) is
applied only where no versioned copy is known, while one that a node of an earlier
release sends is applied (it is that release's latest post).
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
from npc_server.protocol.scan import unpack_scanned
from npc_server.turn import Audience

if TYPE_CHECKING:
    from npc_server.node import Node

log = logging.getLogger(__name__)

TRUSTED_TTL = 24 * 3600.0
ROOMS_KEY = f"{PREFIX}trusted:rooms"
MAX_ROOMS_LOADED = 10_000  # as many scopes as one node keeps (`TrustedContexts.max_scopes`)


CLOCK_KEY = f"{PREFIX}trusted-clock"
# The last version: a Redis integer's (INCR's) range. Redis's clock in µs is 2^53 in
# the year 2255; only a stray clock gets past it, and the versions go on exactly.
MAX_VERSION = 2**63 - 1
# A version is Redis's clock in microseconds, never below the last one it gave: later
# posts get higher versions, also after Redis restarts empty (its clock went on).
# The copy is refused (nil) when the scope's fields would be over the byte budget
# (ARGV[5]): Redis, which every node reads, never holds a copy a post was refused for.
# Lua's numbers are doubles, exact only up to 2^53 (2^53 + 1 is 2^53 there): a clock
# ahead of TIME counts on with INCR, exact to MAX_VERSION (ARGV[6]), and is read and
# written as text. A clock that is no such number starts again from TIME (no version
# came from it); one at MAX_VERSION answers 0: no later version exists, and starting
# again below the versions nodes hold would leave their copies as they are (stale).
SAVE_SCRIPT = """
local function own(key, kind)  -- a stray key of another type there is replaced
  local found = redis.call('TYPE', key).ok
  if found ~= kind and found ~= 'none' then redis.call('DEL', key) end
end
own(KEYS[1], 'hash')
own(KEYS[2], 'hash')
own(KEYS[3], 'string')
if ARGV[4] ~= '' then own(KEYS[4], 'set') end
local size = string.len(ARGV[2])
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if fields[i] ~= ARGV[1] then size = size + string.len(fields[i + 1]) end
end
if size > tonumber(ARGV[5]) then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])  -- exact: below 2^53 until 2255
local last, version = redis.call('GET', KEYS[3]), nil
if last and string.match(last, '^[1-9]%d*$')
    and (#last < #ARGV[6] or (#last == #ARGV[6] and last <= ARGV[6])) then
  if last == ARGV[6] then return 0 end
  if tonumber(last) >= now then  -- exact below 2^53; past it, far above any TIME
    redis.call('INCR', KEYS[3])
    version = redis.call('GET', KEYS[3])
  end
end
if not version then
  version = string.format('%d', now)
  redis.call('SET', KEYS[3], version)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], version)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('SADD', KEYS[4], ARGV[4])
  redis.call('PEXPIRE', KEYS[4], ARGV[3])
end
return version
"""


class ClockExhausted(Exception):
    """The clock in Redis is at `MAX_VERSION`: no post can get a later version."""

    def __init__(self) -> None:
        super().__init__(
            f"the trusted contexts' clock in Redis ({CLOCK_KEY}) is at {MAX_VERSION}, past "
            "which no version exists; see docs/cluster.md (trusted context, versions)"
        )


def trusted_key(scope: str) -> str:
    return f"{PREFIX}trusted:{scope}"


def versions_key(scope: str) -> str:
    return f"{PREFIX}trusted-v:{scope}"


def scope_audience(scope: str) -> dict[str, str]:
    """`player:<id>` or `room:<id>` as the API's body field (`{"player": id}`); else {}."""
    kind, _, name = scope.partition(":")  # the key `Audience.from_key` reads
    return {kind: name} if Audience.from_key(scope) is not None else {}


def _field(npc: str | None) -> str:
    return ALL_NPCS if npc is None else npc


class TrustedCopies:
    """This node's part in keeping every node's trusted contexts current."""

    def __init__(self, node: Node, client: Any) -> None:
        self.node = node
        self.client = client
        # scope -> field -> version of the copy this node has (0: one without a version)
        self._known: dict[str, dict[str, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.rejected = 0
        self.stale = 0  # copies older than the one this node had: not applied
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

    def fits(self, scope: str, npc: str | None, data: Mapping[str, Any]) -> bool:
        """Whether this node could take the copy (within the scope's byte budget)."""
        return self.node.contexts.trusted.fits(scope, npc, len(msgpack.packb(data)))

    def set_nowait(
        self, scope: str, npc: str | None, data: Mapping[str, Any], version: int | None
    ) -> bool:
        """Set on this node unless it has a newer copy (False: over the scope's budget).

        `version` None: a copy from a node of an earlier release, which sends none."""
        return self._set(scope, npc, data, len(msgpack.packb(data)), version)

    async def save(self, scope: str, npc: str | None, data: Mapping[str, Any]) -> int | None:
        """Write the copy and its version in Redis; the version, or None when the scope
        in Redis would be over its byte budget. Raises if Redis does not answer, and
        `ClockExhausted` (writing nothing) if its clock can give no later version."""
        room = scope.removeprefix("room:") if scope.startswith("room:") else ""
        keys = (trusted_key(scope), versions_key(scope), CLOCK_KEY, ROOMS_KEY)
        ttl = int(TRUSTED_TTL * 1000)
        budget = self.node.contexts.trusted.max_bytes_per_scope
        packed = msgpack.packb(data)
        async with asyncio.timeout(TIMEOUT):
            version = await self.client.eval(
                SAVE_SCRIPT, len(keys), *keys, _field(npc), packed, ttl, room, budget, MAX_VERSION
            )
        if version is None:
            return None
        given = int(version)  # decimal text: exact, as every version is from here on
        if given == 0:
            raise ClockExhausted()
        if not 0 < given <= MAX_VERSION:  # no node would apply it
            raise ValueError(f"Redis gave the version {version!r}")
        return given

    async def load(self, scope: str) -> bool:
        """Set this node's copy of `scope` from Redis (what is newer than its own);
        whether Redis has one (True if it cannot say)."""
        try:
            async with asyncio.timeout(TIMEOUT):
                pipe = self.client.pipeline(transaction=True)
                pipe.hgetall(trusted_key(scope))
                pipe.hgetall(versions_key(scope))
                fields, versions = await pipe.execute()
        except Exception as exc:
            log.warning("the trusted context of %s was not read: %s", scope, exc)
            return True
        if not isinstance(fields, dict):
            return True
        if not isinstance(versions, dict):
            versions = {}
        for raw_npc, raw in fields.items():
            self._apply(scope, raw_npc, raw, versions.get(raw_npc))
        return bool(fields)

    def _set(
        self, scope: str, npc: str | None, data: Mapping[str, Any], size: int, version: int | None
    ) -> bool:
        known = self._known.pop(scope, {})
        self._known[scope] = known  # newest last, as the contexts themselves
        field = _field(npc)
        if version is not None and (
            version < known.get(field, 0) or (version == 0 and field in known)
        ):
            self.stale += 1
            return True
        if len(self._known) > 2 * self.node.contexts.trusted.max_scopes:
            del self._known[next(iter(self._known))]
        if not self.node.contexts.trusted.set_nowait(scope, npc, data, size):
            return False
        if version is not None:  # only what this node applied
            known[field] = version
        return True

    def _apply(self, scope: str, raw_npc: Any, raw: Any, raw_version: Any) -> None:
        try:
            npc = raw_npc.decode() if isinstance(raw_npc, bytes) else None
            data = unpack_scanned(raw) if isinstance(raw, bytes) else None
            scope, npc, data = self.check(scope, None if npc == ALL_NPCS else npc, data)
            version = 0 if raw_version is None else int(raw_version)
            if not 0 <= version <= MAX_VERSION:  # one far ahead would pin this copy
                raise ValueError(f"a version of {version}, not from 0 to {MAX_VERSION}")
        except (ApiError, ValueError, TypeError, msgpack.UnpackException) as exc:
            self.rejected += 1
            log.warning("dropped a trusted context of %s in Redis: %s", scope, exc)
            return
        if not self._set(scope, npc, data, len(raw), version):
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
