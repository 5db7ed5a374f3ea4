"""Who is alive and who owns which conversation, as keys in Redis.

- `npc:alive:<node>`: a node's lease, set with a short expiry (`NODE_TTL`) and
  renewed every `RENEW_EVERY` while the node runs. A node whose key lapsed is
  dead (killed, or cut off from Redis) for every other node.
- `npc:owner:<npc>:<audience>`: the node that runs one conversation (an NPC with a
  player, or with a room) now. Claimed on a say, kept while the conversation is
  held, deleted when its node forgets it. A claim takes the key over from a node
  whose lease lapsed, in one script: there is one owner per conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from npc_server.cancelling import cancel_and_wait

log = logging.getLogger(__name__)

PREFIX = "npc:"
NODE_TTL = 6.0  # seconds a node's lease lives unless renewed
RENEW_EVERY = 2.0
CHECK_EVERY = 1.0  # how often a node reads the leases of nodes whose turns it relays
# From a node's death to its relayed turns' end elsewhere: its lease runs out, then
# the next check (plus a round trip) sees it.
CHECK_BOUND = NODE_TTL + CHECK_EVERY + 1.0
# After this node's link to Redis came back, no other node is judged dead for this long:
# a restarted Redis lost every lease, and the others reconnect within their backoff
# (at most 5 s) and renew at once.
LEASE_GRACE = 8.0
OWNER_TTL = 24 * 3600.0  # a forgotten owner key outlives no conversation by more
TIMEOUT = 2.0  # for one claim or release: past it, the caller answers `unavailable`

# KEYS[1] owner key; ARGV[1] this node, ARGV[2] alive-key prefix, ARGV[3] ttl ms.
# The owner stays if it is alive; otherwise this node takes the key. A key of another
# type (not ours) is replaced.
_CLAIM = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'string' then redis.call('DEL', KEYS[1]) end
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. owner) == 1 then
  return owner
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return ARGV[1]
"""

# Delete the owner key only if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def alive_key(node: str) -> str:
    return f"{PREFIX}alive:{node}"


def owner_key(npc: str, audience: str) -> str:
    return f"{PREFIX}owner:{npc}:{audience}"


class Leases:
    """This node's lease and its claims on conversations, through one Redis client."""

    def __init__(self, client: Any, node_id: str) -> None:
        self.client = client
        self.node_id = node_id
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._renewer: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._renew_once()
        self._renewer = asyncio.create_task(self._renew_forever(), name="node-lease")

    async def aclose(self) -> None:
        if self._renewer is not None:
            await cancel_and_wait([self._renewer])
        await asyncio.gather(*self._releases, return_exceptions=True)
        with contextlib.suppress(Exception):  # a node that stops says so at once
            async with asyncio.timeout(TIMEOUT):
                await self.client.delete(alive_key(self.node_id))

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            try:
                await self._renew_once()
            except Exception as exc:  # Redis away: the broker's reader reports and reconnects
                log.debug("node lease not renewed: %s", exc)

    async def _renew_once(self) -> None:
        async with asyncio.timeout(TIMEOUT):
            await self.client.set(alive_key(self.node_id), b"1", px=int(NODE_TTL * 1000))

    async def reassert(self, held: list[tuple[str, str]]) -> None:
        """Back on a Redis that may have lost every key (a restart without persistence):
        this node's lease now, and its owner keys of the conversations it runs (each only
        if no other node claimed it meanwhile)."""
        async with asyncio.timeout(TIMEOUT):
            pipe = self.client.pipeline(transaction=False)
            pipe.set(alive_key(self.node_id), b"1", px=int(NODE_TTL * 1000))
            for npc, audience in held:
                pipe.set(owner_key(npc, audience), self.node_id, nx=True, px=int(OWNER_TTL * 1000))
            await pipe.execute()

    async def claim(self, npc: str, audience: str) -> str:
        """The node that runs this conversation: this one if it was free or its owner died."""
        async with asyncio.timeout(TIMEOUT):
            owner = await self._claim(
                keys=[owner_key(npc, audience)],
                args=[self.node_id, f"{PREFIX}alive:", int(OWNER_TTL * 1000)],
            )
        return owner.decode(errors="replace") if isinstance(owner, bytes) else str(owner)

    def release_nowait(self, npc: str, audience: str) -> None:
        """Give the conversation up (in the background; a lapse is harmless: the key names
        this node, and a claim while it lives is answered with this node)."""
        task = asyncio.get_running_loop().create_task(self._release_one(npc, audience))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release_one(self, npc: str, audience: str) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(TIMEOUT):
                await self._release(keys=[owner_key(npc, audience)], args=[self.node_id])

    async def alive(self, node: str) -> bool:
        """Whether `node` holds a lease now (a node without one runs nothing: it stopped,
        or never was); raises if Redis does not answer."""
        async with asyncio.timeout(TIMEOUT):
            found = await self.client.exists(alive_key(node))
        return bool(found)

    async def dead(self, nodes: set[str]) -> set[str]:
        """Which of `nodes` have no lease (an empty set if Redis cannot say)."""
        if not nodes:
            return set()
        ordered = sorted(nodes)
        try:
            async with asyncio.timeout(TIMEOUT):
                found = await self.client.exists(*(alive_key(n) for n in ordered))
                if found == len(ordered):
                    return set()
                pipe = self.client.pipeline(transaction=False)
                for node in ordered:
                    pipe.exists(alive_key(node))
                flags = await pipe.execute()
        except Exception as exc:
            log.debug("node leases not checked: %s", exc)
            return set()
        return {node for node, flag in zip(ordered, flags, strict=True) if not flag}
