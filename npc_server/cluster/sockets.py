"""The per-player socket cap across the cluster: attached sockets counted in Redis.

Each player has one hash, `npc:sockets:<player>`: a field per attached session
whose value is `<node> <attached ms> <lapses ms>`. A node claims a field when a
socket attaches (one Lua script counts, refuses or picks the oldest to
replace, and writes, atomically) and releases it when the socket goes. A
field stops counting as soon as its node's lease (`npc:alive:<node>`, see
`leases`) has lapsed, at most 6 s after the node died; besides, fields lapse
`LEASE` seconds after their node last renewed them (every `RENEW` seconds),
which frees what a live node failed to release (Redis was away). So an idle
socket costs Redis one renewal per `RENEW`, not one per heartbeat. Replacing
the oldest socket of another node signals its `session:<id>`; that node closes
it with REPLACED.

Without Redis (one process, or Redis away) the cap counts this node's sockets,
as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from npc_server.brokers import live_redis, session_channel
from npc_server.brokers.redis import reply_text
from npc_server.cluster.leases import alive_key
from npc_server.protocol.codes import CloseCode
from npc_server.session import SessionState

if TYPE_CHECKING:
    from npc_server.node import Node

log = logging.getLogger(__name__)

KEY = "npc:sockets:"
ALIVE = alive_key("")  # the prefix of node leases
LEASE = 120.0
RENEW = 40.0
CALL_TIMEOUT = 1.0

# KEYS[1] the player's hash; ARGV: session, node, now ms, lapses ms, cap, replace (0/1),
# the prefix of node leases. A field of a node without a lease (it died) no longer counts.
# Returns {1} (claimed), {0} (refused) or {2, session, node} (claimed; replace that one).
CLAIM = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
local fields = redis.call('HGETALL', KEYS[1])
local now = tonumber(ARGV[3])
local latest = 2 * tonumber(ARGV[4]) - now  -- no node's claim lapses later (clock skew too)
local count, oldest, oldest_at, attached = 0, nil, nil, ARGV[3]
local alive = {[ARGV[2]] = true}
for i = 1, #fields, 2 do
  local session, value = fields[i], fields[i + 1]
  local node, at, lapses = string.match(value, '^(%S+) (%d+) (%d+)$')
  if node and alive[node] == nil then
    alive[node] = redis.call('EXISTS', ARGV[7] .. node) == 1
  end
  local fits = node and string.match(session, '^%S+$') and tonumber(lapses) <= latest
  if not fits or tonumber(lapses) <= now or not alive[node] then
    redis.call('HDEL', KEYS[1], session)
  elseif session == ARGV[1] then
    attached = at
  else
    count = count + 1
    if not oldest_at or tonumber(at) < oldest_at then
      oldest, oldest_at = session .. ' ' .. node, tonumber(at)
    end
  end
end
local answer = {1}
if count >= tonumber(ARGV[5]) then
  if ARGV[6] ~= '1' or not oldest then return {0} end
  local session, node = string.match(oldest, '^(%S+) (%S+)$')
  redis.call('HDEL', KEYS[1], session)
  answer = {2, session, node}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. attached .. ' ' .. ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(ARGV[4]) - now))
return answer
"""

# Delete a field only if this node still holds it (it may have moved to another node).
RELEASE = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value and string.sub(value, 1, #ARGV[2] + 1) == ARGV[2] .. ' ' then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# Renew this node's fields: ARGV: node, lapses ms, lease ms, then session ids.
RENEW_SCRIPT = """
for i = 4, #ARGV do
  local value = redis.call('HGET', KEYS[1], ARGV[i])
  if value then
    local node, at = string.match(value, '^(%S+) (%d+) ')
    if node == ARGV[1] then
      redis.call('HSET', KEYS[1], ARGV[i], node .. ' ' .. at .. ' ' .. ARGV[2])
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


class Claim(Enum):
    GRANTED = "granted"
    REFUSED = "refused"
    LOCAL = "local"  # no Redis to ask: the caller applies the cap on this node


@dataclass(frozen=True, slots=True)
class SocketStatistics:
    claims: int
    refused: int
    replaced: int
    local: int


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class SocketClaims:
    """This node's side of the cluster-wide socket cap."""

    def __init__(self, node: Node, wall: Any = time.time) -> None:
        self.node = node
        self.broker = node.broker
        self._wall = wall
        self._renewer: asyncio.Task[None] | None = None
        self._claims = self._refused = self._replaced = self._local = 0
        self.broker.on_message("sockets.replace", self._on_replace)

    def _client(self) -> Any:
        return live_redis(self.broker)

    @property
    def enabled(self) -> bool:
        """Whether the cap is counted across the cluster (a node of one with Redis)."""
        return getattr(self.broker, "client", None) is not None

    async def claim(self, player: str, session: str) -> Claim:
        """Count this socket for `player`; REFUSED over the cap (policy refuse)."""
        client = self._client()
        if client is None:
            self._local += 1
            return Claim.LOCAL
        limits = self.node.config.limits
        now = _ms(self._wall())
        args = [session, self.broker_node, now, now + _ms(LEASE), limits.max_sockets_per_player]
        args += [1 if limits.sockets_policy == "replace" else 0, ALIVE]
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                answer = await client.eval(CLAIM, 1, KEY + player, *args)
        except Exception as exc:  # Redis away: count on this node
            log.warning("socket cap for %s counted on this node: %s", player, exc)
            self._local += 1
            return Claim.LOCAL
        return self._answered(answer)

    @property
    def broker_node(self) -> str:
        return self.node.node_id

    def _answered(self, answer: Any) -> Claim:
        self._claims += 1
        if not answer or int(answer[0]) == 0:
            self._refused += 1
            return Claim.REFUSED
        if int(answer[0]) == 2:
            self._replaced += 1
            self._replace(reply_text(answer[1]), reply_text(answer[2]))
        return Claim.GRANTED

    def _replace(self, session_id: str, node: str) -> None:
        if node == self.node.node_id:
            self._close(session_id)
        else:
            message = {"k": "sockets.replace", "session": session_id}
            self.broker.signal_nowait(session_channel(session_id), message)

    def _on_replace(self, origin: str, message: dict[str, Any]) -> None:
        session_id = message.get("session")
        if isinstance(session_id, str):
            self._close(session_id)

    def _close(self, session_id: str) -> None:
        session = self.node.hub.get(session_id)
        if session is not None and session.state is SessionState.ATTACHED:
            session.on_close(CloseCode.REPLACED)

    def release_nowait(self, player: str, session: str) -> asyncio.Task[None] | None:
        """This node's socket on `session` is gone: stop counting it (in the background;
        the task, for whoever wants to wait for it)."""
        client = self._client()
        if client is None:
            return None
        return asyncio.get_running_loop().create_task(self._release(client, player, session))

    async def _release(self, client: Any, player: str, session: str) -> None:
        with contextlib.suppress(Exception):  # unreleased, it lapses after LEASE
            async with asyncio.timeout(CALL_TIMEOUT):
                await client.eval(RELEASE, 1, KEY + player, session, self.node.node_id)

    # --- renewing --------------------------------------------------------------

    def start(self) -> None:
        """Renew this node's claims every RENEW seconds (cluster mode only)."""
        if self.enabled and self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_forever(), name="socket-claims")

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(RENEW)
            with contextlib.suppress(Exception):  # Redis away: the next round renews
                await self.renew()

    async def renew(self) -> None:
        """One round: every attached session of this node lapses LEASE from now."""
        client = self._client()
        if client is None:
            return
        by_player: dict[str, list[str]] = {}
        for session in self.node.hub.all_sessions():
            if session.state is SessionState.ATTACHED:
                by_player.setdefault(session.player, []).append(session.id)
        lapses = _ms(self._wall() + LEASE)
        pipe = client.pipeline(transaction=False)
        for player, sessions in by_player.items():
            args = [self.node.node_id, lapses, _ms(LEASE), *sessions]
            pipe.eval(RENEW_SCRIPT, 1, KEY + player, *args)
        if by_player:
            await pipe.execute()

    def statistics(self) -> SocketStatistics:
        return SocketStatistics(self._claims, self._refused, self._replaced, self._local)
