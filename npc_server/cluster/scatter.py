"""Which nodes are alive, and one request asked of all of them (the game server's API).

`npc:nodes` is a sorted set: each node adds itself with Redis's clock as the score
every `RENEW_EVERY`, and leaves it when it stops. A node is live if its entry is
newer than `NODE_TTL` and its lease (`npc:alive:<node>`) exists: the directory only
says which leases to look at (a key scan would walk every key in Redis).

`gather` sends one message to every other live node through `Forwarder.ask` (the
`api` kind, answered by `api.answer_forwarded`) and waits for all answers at once,
each for at most `leases.TIMEOUT`: a node that does not answer in time is named in
`missing`, and the caller answers with what came.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from npc_server.cluster.leases import NODE_TTL, PREFIX, RENEW_EVERY, TIMEOUT

if TYPE_CHECKING:
    from npc_server.cluster.forward import Forwarder

log = logging.getLogger(__name__)

NODES_KEY = f"{PREFIX}nodes"
MAX_NODES = 1_000  # a directory holding more than this is not ours: the rest are ignored

# KEYS[1] the directory; ARGV[1] this node, ARGV[2] how long an entry counts (ms).
# Redis's clock scores the entries, so machines whose clocks differ agree. A key of
# another type (not ours) is replaced.
_JOIN = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'zset' then redis.call('DEL', KEYS[1]) end
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZADD', KEYS[1], ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[2] * 10)
return 1
"""

# KEYS[1] the directory; ARGV[1] entry lifetime (ms), ARGV[2] lease prefix, ARGV[3] limit.
_LIVE = """
if redis.call('TYPE', KEYS[1])['ok'] ~= 'zset' then return {} end
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local nodes = redis.call('ZRANGEBYSCORE', KEYS[1], ms - ARGV[1], '+inf', 'LIMIT', 0, ARGV[3])
local live = {}
for _, node in ipairs(nodes) do
  if redis.call('EXISTS', ARGV[2] .. node) == 1 then live[#live + 1] = node end
end
return live
"""


class NodeDirectory:
    """This node's entry in `npc:nodes`, and the list of live nodes."""

    def __init__(self, client: Any, node_id: str) -> None:
        self.client = client
        self.node_id = node_id
        self._join = client.register_script(_JOIN)
        self._live = client.register_script(_LIVE)
        self._renewer: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        await self._join_once()
        self._renewer = asyncio.create_task(self._renew_forever(), name="node-directory")

    async def aclose(self) -> None:
        # Told to stop rather than cancelled: redis-py 8 can swallow a cancel that
        # lands mid-command (tasks that cannot be told use `cancel_and_wait`).
        self._stop.set()
        if self._renewer is not None:
            await asyncio.gather(self._renewer, return_exceptions=True)
        with contextlib.suppress(Exception):  # else its entry lapses within NODE_TTL
            async with asyncio.timeout(TIMEOUT):
                await self.client.zrem(NODES_KEY, self.node_id)

    async def _renew_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RENEW_EVERY):
                    await self._stop.wait()
                return
            try:
                await self._join_once()
            except Exception as exc:  # Redis away: the broker reports and reconnects
                log.debug("node directory entry not renewed: %s", exc)

    async def _join_once(self) -> None:
        async with asyncio.timeout(TIMEOUT):
            await self._join(keys=[NODES_KEY], args=[self.node_id, int(NODE_TTL * 1000)])

    async def live(self) -> list[str]:
        """The live nodes (this one among them); raises if Redis does not answer."""
        async with asyncio.timeout(TIMEOUT):
            found = await self._live(
                keys=[NODES_KEY], args=[int(NODE_TTL * 1000), f"{PREFIX}alive:", MAX_NODES]
            )
        nodes = [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in found]
        return sorted(set(nodes))


@dataclass
class Gathered:
    """What every other live node answered to one request (their `result` maps)."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # no answer in time, or a bad one

    def partial(self) -> dict[str, Any]:
        """The fields an API answer adds when some node is missing (none otherwise)."""
        if not self.missing:
            return {}
        return {"partial": True, "nodes_missing": sorted(self.missing)}


async def gather(cluster: Forwarder, message: Mapping[str, Any]) -> Gathered:
    """Ask every other live node; raises if Redis cannot say which nodes live."""
    others = [n for n in await cluster.directory.live() if n != cluster.node_id]
    answers = await asyncio.gather(*(_ask_one(cluster, n, message) for n in others))
    gathered = Gathered()
    for node, result in zip(others, answers, strict=True):
        if result is None:
            gathered.missing.append(node)
        else:
            gathered.results[node] = result
    return gathered


async def _ask_one(
    cluster: Forwarder, node: str, message: Mapping[str, Any]
) -> dict[str, Any] | None:
    try:
        answer = await cluster.ask(node, message)
    except TimeoutError:
        log.warning("node %s did not answer a %r in time", node, message.get("op"))
        return None
    result = answer.get("result")
    if not isinstance(result, dict):  # an error, or not an answer at all
        log.warning("node %s answered a %r with %.200r", node, message.get("op"), answer)
        return None
    return result
