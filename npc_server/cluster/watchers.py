"""What a watcher (`GET /watch`) on this node needs of the other nodes of a cluster.

A room's members may all be on other nodes, and so may its turns. A watcher here:

- is admitted if some other node has a member of the room: the API's room listing
  (`{"k": "api", "op": "room"}`, answered by `api.answer_forwarded`) asked of every
  live node, checked by `answers.member_list`; a node that does not answer (or answers
  something else) may have members, so the watch goes ahead, as a game say does;
- starts, once Redis delivers the room's channel here (other nodes heard that this node
  listens: their frames of the room reach its log from then on), with the turns this
  node relays on that channel (`RemoteTurns.snapshot`: each start and its text so far);
  a turn this node did not follow yet has its frames dropped here until its node
  answers the catch-up asked on its first one (`late_starts`), which reaches the room's
  log as its `turn.start` and one delta with the text so far;
- lists in `live` the members of every node, asked once its log position is taken: a
  node's answer comes after the frames it published before, which are in the log before
  that position, and what it publishes after its answer follows `live`. What a node
  published between that position and its answer (a presence) is in the answer and
  follows `live` as well, which changes nothing: a `joined` of a listed member, a `left`
  of one not listed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from npc_server.brokers import room_channel
from npc_server.cluster.answers import member_list, valid
from npc_server.cluster.leases import TIMEOUT
from npc_server.cluster.scatter import gather
from npc_server.protocol.frames import ServerFrame

if TYPE_CHECKING:
    from npc_server.cluster.forward import Forwarder


async def members_elsewhere(cluster: Forwarder, room: str) -> tuple[list[str], bool]:
    """The room's members on every other live node (in node order; a player on two nodes
    twice), and whether some node did not answer; raises if Redis cannot say which nodes
    live."""
    gathered = await gather(cluster, {"k": "api", "op": "room", "room": room})
    members = [member for _, theirs in valid(gathered, member_list) for member in theirs]
    return members, bool(gathered.missing)


async def delivered(cluster: Forwarder) -> None:
    """Until Redis delivers every channel this node subscribed to so far (and the other
    nodes were told it listens), the link to Redis is lost, or `TIMEOUT` passed."""
    done = asyncio.get_running_loop().create_future()

    def settle() -> None:
        if not done.done():
            done.set_result(None)

    cluster.broker.when_subscribed(settle, settle)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(TIMEOUT):
            await done


def relayed_snapshot(cluster: Forwarder, room: str) -> list[ServerFrame]:
    """The room's turns that other nodes run and this node relays: each `turn.start` and
    one delta at 0 with the text that reached this node."""
    frames, _ = cluster.remote.snapshot({room_channel(room)})
    return frames
