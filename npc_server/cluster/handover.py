"""Session handover: a `hello{resume}` for a session another node holds continues it here.

The new node (B) and the node holding the session (X) talk through the broker:

1. B subscribes a `StandIn` under the session's id to `session:<id>` and
   `player:<player>`, which records each frame with its (origin, number).
2. Once Redis delivers those, B asks Redis how many subscribe `session:<id>`
   (`PUBSUB NUMSUB`): only B's stand-in means no node holds it (it ended, or
   its node died), so B looks for a state parked by a node that drained
   (`npc:handover:<id>`), else resumes with a snapshot at once.
3. Otherwise B signals `session:<id>` with `handover.ask`; X answers
   `handover.offer` with the player's rooms; B subscribes the stand-in to
   them and, once that is live, sends `handover.take`.
4. X, in one synchronous step, exports the session (seq, the replay window
   after the client's seq, its queued frames, rooms, contexts and its
   broker position), forgets it without presence (closing a socket still on
   it with REPLACED) and sends the state to B (`handover.state`).
5. B installs it into a real session under the same id, joins its rooms
   quietly, queues X's frames, then the stand-in's frames that X had not
   received (each (origin, number) above X's position), and replays after
   the client's seq.

No answer within `TIMEOUT`, a refusal or a state that does not validate: a new
session and a snapshot, as before.

A node that drains hands the sessions it still holds (their players away) to
live nodes before it exits (`hand_over_all`): it sends each live node a
`handover.adopt` naming some of them, and that node takes each as a resume
would (steps 1-5, its stand-in subscribed before it asks), so the session goes
on receiving what is published for it, and the player's resume, anywhere,
finds it held. A node that drains too answers `handover.decline`, and its
share goes to the others. What no node took within `ADOPT_WAIT` (or what
every node declined) is parked in Redis (`park_all`), where frames published
meanwhile have no subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack

from npc_server.brokers import player_channel, room_channel, session_channel
from npc_server.brokers.redis import reply_text
from npc_server.cluster.handover_state import (
    MAX_ID,
    BadState,
    SessionExport,
    StandIn,
    check_adopted,
    check_ids,
    check_rooms,
    decode_state,
    encode_state,
    export_state,
    refusal,
)
from npc_server.protocol.codes import CloseCode
from npc_server.protocol.frames import Resume
from npc_server.protocol.scan import unpack_scanned
from npc_server.session import Session, SessionState

if TYPE_CHECKING:
    from npc_server.node import Node

log = logging.getLogger(__name__)

# The bound on a handover: past it, the player gets a new session and a snapshot.
TIMEOUT = 1.5
# How long a draining node waits for live nodes to take its sessions (each takes
# its share at once, every handover bounded by TIMEOUT), and how many one message names.
ADOPT_WAIT = 4 * TIMEOUT
ADOPT_BATCH = 100
PREFIX = "npc:"
PARKED = "npc:handover:"
PARKED_OF = "npc:parked:"  # + player: the ids of the player's parked sessions
SEQS_OF = "npc:parked-seq:"  # + player: hash, their ids -> last seq (for listings)
# Drop a player's parked states and their lists in one step (a kick): the ids of the
# states there were. (Keys of another type than these scripts expect are strays: dropped
# by a kick, and listed as nothing.)
FORGET_PARKED = """
local dropped = {}
if redis.call('TYPE', KEYS[1]).ok == 'set' then
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    if redis.call('DEL', ARGV[1] .. id) == 1 then dropped[#dropped + 1] = id end
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
return dropped
"""
# The player's parked sessions still waiting for a resume: id, last seq, id, last seq, ...
# (a session parked without a seq, by an older node, is left out).
LIST_PARKED = """
local found = {}
if redis.call('TYPE', KEYS[1]).ok ~= 'set' or redis.call('TYPE', KEYS[2]).ok ~= 'hash' then
  return found
end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local seq = redis.call('HGET', KEYS[2], id)
  if seq and redis.call('EXISTS', ARGV[1] .. id) == 1 then
    found[#found + 1] = id
    found[#found + 1] = seq
  end
end
return found
"""
MAX_OFFERS = 1024


@dataclass(slots=True)
class HandoverStatistics:
    asked: int = 0  # resumes of another node's session that this node tried
    resumed: int = 0  # ... that continued the session here
    snapshots: int = 0  # ... that fell back to a new session and a snapshot
    timeouts: int = 0  # ... because no node answered in time
    handed: int = 0  # sessions this node handed to another
    parked: int = 0  # sessions written to Redis when this node drained
    adopted: int = 0  # sessions a draining node handed here with no socket on them
    not_adopted: int = 0  # ... that it asked this node to take and did not arrive
    rejected: int = 0  # messages or parked states from another node that did not validate


class Kicked(Exception):
    """The player was kicked while their session was on its way here (refuse 4508)."""


@dataclass(slots=True)
class _Pending:
    """A resume waiting on this node for another node's answer."""

    request: str
    standin: StandIn
    resume: Resume
    answer: asyncio.Future[SessionExport | None]
    channels: list[str] = field(default_factory=list)
    origin: str | None = None
    adopt: bool = False  # taken for a draining node (no socket)
    kicked: bool = False  # the player was kicked meanwhile: the socket is refused
    crossed_outage: bool = False  # this node's link to Redis was lost meanwhile


@dataclass(slots=True)
class _Drain:
    """What a drain of this node asked of the live nodes (`hand_over_all`)."""

    targets: list[str]  # the live nodes, this one excluded
    declined: set[str] = field(default_factory=set)  # they drain too
    asked: dict[str, dict[str, Session]] = field(default_factory=dict)  # node -> id -> session
    outstanding: set[str] = field(default_factory=set)  # asked, not declined, still held here
    turn: int = 0  # the next target, in turn across every ask of the drain
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def open_targets(self) -> list[str]:
        return [n for n in self.targets if n not in self.declined]


@dataclass(frozen=True, slots=True)
class _Offer:
    """A session this node offered to another node, until it is taken."""

    session: str
    node: str
    after: int
    at: float
    adopt: bool = False  # to a node taking it for a drain, not for a player's resume


class SessionHandover:
    """Both sides of the handover for one node (see the module docstring)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.broker = node.broker
        self.timeout = TIMEOUT
        self.stats = HandoverStatistics()
        self._pending: dict[str, _Pending] = {}
        self._offers: dict[str, _Offer] = {}
        self._resuming: list[_Pending] = []
        self._drain: _Drain | None = None  # while this node hands its sessions over
        # Sessions this node is taking from a draining node, and asks for them meanwhile.
        self._adoptions: dict[str, asyncio.Task[bool]] = {}  # each: whether a kick dropped it
        self._deferred: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for kind, handler in (
            ("handover.adopt", self._on_adopt),
            ("handover.decline", self._on_decline),
            ("handover.ask", self._on_ask),
            ("handover.offer", self._on_offer),
            ("handover.take", self._on_take),
            ("handover.state", self._on_state),
        ):
            self.broker.on_message(kind, handler)

    def statistics(self) -> dict[str, int]:
        return asdict(self.stats)

    def _client(self) -> Any:
        return getattr(self.broker, "client", None)

    # --- the new node: resume a session held elsewhere ------------------------

    async def resume(
        self, player: str, resume: Resume, *, adopt: bool = False
    ) -> tuple[Session, list[bytes]] | None:
        """Continue `resume.session` here with the frames to replay; None: the caller's
        own path (the session here, or a new one and a snapshot). `adopt`: for a
        draining node, with no socket (not counted as a player's resume)."""
        adoption = self._adoptions.get(resume.session)
        if adoption is not None and not adopt:
            # This node is taking it from a draining node: once that is done, the
            # caller resumes it here.
            await asyncio.wait({adoption}, timeout=self.timeout)
            if adoption.done() and not adoption.cancelled() and adoption.result():
                raise Kicked(player)  # the player was kicked meanwhile
            return None
        client = self._client()
        if client is None or not self.broker.available:
            return None
        # A stand-in shares the session's id: never beside a session or stand-in of it here.
        busy = {p.resume.session for p in self._resuming}
        if resume.session in busy or self.node.hub.get(resume.session) is not None:
            return None
        stats = self.stats if not adopt else HandoverStatistics()  # adoptions count apart
        stats.asked += 1
        limits = self.node.config.limits
        standin = StandIn(resume.session, player, lambda: self.broker.delivering, 4096)
        loop = asyncio.get_running_loop()
        pending = _Pending(secrets.token_hex(8), standin, resume, loop.create_future(), adopt=adopt)
        self._resuming.append(pending)
        self._listen(pending, [session_channel(resume.session), player_channel(player)])
        state: SessionExport | None = None
        try:
            async with asyncio.timeout(self.timeout):
                state = await self._ask(client, pending)
        except TimeoutError:
            stats.timeouts += 1
            log.info("no node handed over session %s within %g s", resume.session, self.timeout)
        except Exception as exc:  # Redis went away meanwhile: the snapshot path
            log.warning("handover of session %s failed: %s", resume.session, exc)
        finally:  # also when cancelled: no stand-in stays subscribed
            self._pending.pop(pending.request, None)
            self._resuming.remove(pending)
            for channel in pending.channels:
                self.broker.unsubscribe(channel, standin)
                if self.node.cluster is not None:
                    self.node.cluster.remote.release(channel)
        if pending.kicked:  # the kick reached this node before the session did: drop it
            raise Kicked(player)
        installed = self._install(pending, state, limits.rooms_per_player)
        stats.resumed += installed is not None
        stats.snapshots += installed is None
        return installed

    def link_changed(self) -> None:
        """This node's link to Redis was lost or is back: what was published for the
        sessions being resumed here meanwhile may be missing from their stand-ins, so
        none of them replays across that (a new session and a snapshot instead)."""
        for pending in self._resuming:
            pending.crossed_outage = True

    def kick_pending(self, player: str) -> list[str]:
        """A kick: the player's resumes under way here raise `Kicked`, whatever the
        other node hands over; the ids of their sessions."""
        pending = [p for p in self._resuming if p.standin.player == player]
        for each in pending:
            each.kicked = True
        return [each.resume.session for each in pending]

    def _listen(self, pending: _Pending, channels: list[str]) -> None:
        for channel in channels:
            self.broker.subscribe(channel, pending.standin)
            if self.node.cluster is not None:  # turns under way for it come mid-stream
                self.node.cluster.remote.adopt(channel)
        pending.channels.extend(channels)

    async def _subscribed(self) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.broker.when_subscribed(lambda: _settle(done, None))
        await done

    async def _ask(self, client: Any, pending: _Pending) -> SessionExport | None:
        await self._subscribed()
        session_id = pending.resume.session
        [(_, holders)] = await client.pubsub_numsub(PREFIX + session_channel(session_id))
        if int(holders) <= 1:  # only this node's stand-in: no node holds the session
            return await self._unpark(client, pending)
        self._pending[pending.request] = pending
        ask = {
            "k": "handover.ask",
            "req": pending.request,
            "session": session_id,
            "player": pending.standin.player,
            "seq": pending.resume.seq,
            "adopt": pending.adopt,
        }
        self.broker.signal_nowait(session_channel(session_id), ask)
        return await pending.answer

    async def _unpark(self, client: Any, pending: _Pending) -> SessionExport | None:
        """The state a draining node left in Redis for this session, if any."""
        data = await client.getdel(PARKED + pending.resume.session)
        if data is None:
            return None
        try:
            message = unpack_scanned(data)
            if not isinstance(message, dict):
                raise BadState("a parked state is not a map")
            return self._decode(message, pending, window=True)
        except (BadState, ValueError, TypeError, msgpack.UnpackException) as exc:
            self._reject(f"the parked state of session {pending.resume.session}", exc)
            return None

    def _decode(
        self, message: Mapping[str, Any], pending: _Pending, *, window: bool = False
    ) -> SessionExport:
        resume = pending.resume
        return decode_state(message, resume.session, pending.standin.player, resume.seq, window)

    def _reject(self, what: str, exc: Exception) -> None:
        self.stats.rejected += 1
        log.warning("rejected %s: %s", what, exc)

    def _on_offer(self, origin: str, message: dict[str, Any]) -> None:
        pending = self._pending.get(str(message.get("req")))
        rooms = message.get("rooms")
        if pending is None or pending.origin is not None:
            return  # a late or second offer: that resume is over or under way
        try:
            rooms = check_rooms(rooms)
        except BadState as exc:
            self._reject(f"an offer from node {origin}", exc)
            _settle(pending.answer, None)
            return
        pending.origin = origin
        limit = self.node.config.limits.rooms_per_player
        self._listen(pending, [room_channel(r) for r in rooms[:limit]])
        take = {"k": "handover.take", "req": pending.request}
        # Only once the rooms deliver here may the holder stop receiving them.
        self.broker.when_subscribed(lambda: self.broker.send_nowait(origin, take))

    def _on_state(self, origin: str, message: dict[str, Any]) -> None:
        pending = self._pending.get(str(message.get("req")))
        if pending is None or pending.answer.done():
            log.info("a handover answer from node %s came too late", origin)
            return
        if pending.origin is not None and origin != pending.origin:
            self._reject(f"a state from node {origin}", BadState("it was offered by another node"))
            return
        if message.get("ok") is not True:
            pending.answer.set_result(None)
            return
        try:
            pending.answer.set_result(self._decode(message, pending))
        except BadState as exc:
            self._reject(f"the state of session {pending.resume.session} from {origin}", exc)
            pending.answer.set_result(None)

    def _install(
        self, pending: _Pending, state: SessionExport | None, max_rooms: int
    ) -> tuple[Session, list[bytes]] | None:
        """Make the handed-over session real, in the same step as the stand-in left."""
        standin = pending.standin
        if state is None or standin.overflowed:
            return None
        if pending.crossed_outage:
            log.info("session %s was handed over across a Redis outage: a snapshot", state.session)
            return None
        node = self.node
        session = node.open_session(state.player, state.session)
        for room in state.rooms[:max_rooms]:
            node.hub.join(room, state.player, quiet=True)
        self._restore_contexts(state)
        session.restore_nowait(state.last_seq, state.replay)
        if node.cluster is not None:  # the new node follows them from their next frame
            node.cluster.remote.follow(state.turns, node.turns.get)
        kept = standin.kept(state.position)
        for frame in (*state.queued, *kept):
            session.push_nowait(frame)
        log.info(
            "session %s handed over: seq %d, %d replayed, %d queued, %d of %d buffered kept",
            session.id,
            state.last_seq,
            len(state.replay),
            len(state.queued),
            len(kept),
            len(standin.frames),
        )
        for turn in standin.dropped_turns:
            session.drop_turn_nowait(turn)
        replay = session.replay_after(pending.resume.seq)
        if replay is None:  # cannot happen with a validated state; never a gap
            node.end_session(session)
            return None
        return session, replay

    def _restore_contexts(self, state: SessionExport) -> None:
        contexts = self.node.contexts
        for scope, data in state.contexts.items():
            npc = None if scope == "*" else scope
            if npc is None or npc in self.node.npcs:
                size = len(msgpack.packb(data))
                contexts.set_nowait(state.player, npc, data, size)

    # --- the holding node: hand a session over --------------------------------

    def _held(self, session_id: Any, player: Any) -> Session | None:
        """The session to hand over, or None if `player` may not resume it (any more)."""
        session = self.node.hub.get(session_id) if isinstance(session_id, str) else None
        if session is None or session.player != player or session.state is SessionState.EXPIRED:
            return None
        if session.expired_at(self.node.clock()):
            self.node.end_session(session)
            return None
        return session

    def _on_ask(self, origin: str, message: dict[str, Any]) -> None:
        request, seq = message.get("req"), message.get("seq")
        if not isinstance(request, str) or len(request) > 64 or not isinstance(seq, int):
            self._reject(f"an ask from node {origin}", BadState("req and seq are required"))
            return
        session_id = message.get("session")
        if isinstance(session_id, str) and session_id in self._adoptions:
            # Being taken here from a draining node: answered once it is.
            self._deferred.setdefault(session_id, []).append((origin, message))
            return
        if not isinstance(session_id, str) or self.node.hub.get(session_id) is None:
            return  # not held here (a node resuming it at the same time hears the ask too)
        session = self._held(session_id, message.get("player"))
        if session is None:  # another player's, or past its resume window
            self.broker.send_nowait(origin, refusal(request))
            return
        if session.replay_after(seq) is None:  # the window no longer covers the client
            self._refuse(origin, request, session)
            return
        adopt = message.get("adopt") is True
        self._remember(request, _Offer(session.id, origin, seq, self.node.clock(), adopt))
        rooms = sorted(self.node.hub.rooms_of(session.player))
        self.broker.send_nowait(origin, {"k": "handover.offer", "req": request, "rooms": rooms})

    def _remember(self, request: str, offer: _Offer) -> None:
        offers = self._offers
        offers[request] = offer
        stale = self.node.clock() - 4 * self.timeout
        while offers and (len(offers) > MAX_OFFERS or next(iter(offers.values())).at < stale):
            del offers[next(iter(offers))]

    def _refuse(self, origin: str, request: str, session: Session) -> None:
        # As a resume refused on one node: a detached session ends, a socket keeps its own.
        self.broker.send_nowait(origin, refusal(request))
        if session.owner is None:
            self.node.end_session(session)

    def _on_take(self, origin: str, message: dict[str, Any]) -> None:
        offer = self._offers.pop(str(message.get("req")), None)
        if offer is None or offer.node != origin:
            return  # not offered to that node (or offered too long ago)
        request = str(message["req"])
        fresh = self.node.clock() - self.timeout  # an older offer's resume has given up
        if offer.adopt and any(
            o.session == offer.session and not o.adopt and o.at >= fresh
            for o in self._offers.values()
        ):  # the player is resuming it elsewhere: that resume takes it
            self.broker.send_nowait(origin, refusal(request))
            return
        session = self.node.hub.get(offer.session)
        if session is None or session.state is SessionState.EXPIRED:
            self.broker.send_nowait(origin, refusal(request))
            return
        answer = self._export(request, session, offer.after)
        if answer is None:
            self._refuse(origin, request, session)
            return
        self.node.end_session(session, CloseCode.REPLACED, quiet=True)
        self.broker.send_nowait(origin, answer)
        self.stats.handed += 1

    def session_ended(self, session: Session) -> None:
        """A session left this node (handed over, kicked, expired): a drain handing its
        sessions over no longer waits for it."""
        drain = self._drain
        if drain is not None and session.id in drain.outstanding:
            drain.outstanding.discard(session.id)
            drain.changed.set()

    def _export(self, request: str, session: Session, after: int) -> dict[str, Any] | None:
        """The state message, or None (the session keeps its queue) if it cannot go."""
        node = self.node
        rooms = sorted(node.hub.rooms_of(session.player))
        contexts = node.contexts.scopes_of(session.player)
        state = export_state(session, after, rooms, self.broker.position(), contexts)
        if state is None:
            return None
        state = dataclasses.replace(state, turns=node.turns_under_way_for(session))
        message = encode_state(request, state)
        if message is None:  # too large for one publication
            for frame in state.queued:
                session.push_nowait(frame)
        return message

    # --- draining: hand what is still held to live nodes, park the rest -------

    async def hand_over_all(self) -> int:
        """Have live nodes take the sessions still held here (see the module docstring);
        how many they took within `ADOPT_WAIT`."""
        if self._adoptions:  # sessions this node is taking from another: they go on with it
            await asyncio.wait(set(self._adoptions.values()), timeout=2 * self.timeout)
        cluster = self.node.cluster
        # Not a session whose socket is still closing: a node taking it would close that
        # socket as replaced (another device), where parking closes it with 1001.
        sessions = [
            s for s in self.node.hub.all_sessions() if s.owner is None and self._window_left(s)
        ]
        if cluster is None or not sessions or not self.broker.available:
            return 0
        try:
            others = [n for n in await cluster.directory.live() if n != cluster.node_id]
        except Exception as exc:
            log.warning("no live node found to take the sessions: %s", exc)
            return 0
        if not others:
            return 0
        # Twice: a take refused for a player's resume under way is asked again once that
        # resume has had its time (it took the session, or it gave up). A node that
        # drains too declines at once: its share goes to the others, or the wait ends.
        drain = self._drain = _Drain(others)
        handed = self.stats.handed
        try:
            for _ in range(2):
                remaining = self._still_held(sessions)
                if not remaining or not drain.open_targets():
                    break
                drain.asked, drain.outstanding = {}, set()
                self._ask_to_adopt(drain, remaining)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(ADOPT_WAIT / 2):
                        while drain.outstanding:
                            drain.changed.clear()
                            await drain.changed.wait()
        finally:
            self._drain = None
        return self.stats.handed - handed

    def _still_held(self, sessions: list[Session]) -> list[Session]:
        hub = self.node.hub
        return [s for s in sessions if hub.get(s.id) is s]

    def _ask_to_adopt(self, drain: _Drain, sessions: list[Session]) -> None:
        """Name `sessions` to the drain's open targets in turn, `ADOPT_BATCH` a message."""
        targets = drain.open_targets()
        for start in range(0, len(sessions), ADOPT_BATCH):
            batch = sessions[start : start + ADOPT_BATCH]
            target = targets[drain.turn % len(targets)]
            drain.turn += 1
            drain.asked.setdefault(target, {}).update((s.id, s) for s in batch)
            drain.outstanding.update(s.id for s in batch)
            entries = [[s.id, s.player, _window_start(s)] for s in batch]
            self.broker.send_nowait(target, {"k": "handover.adopt", "sessions": entries})

    def _on_decline(self, origin: str, message: dict[str, Any]) -> None:
        """A node asked to adopt drains too: the sessions it names go to the others."""
        drain = self._drain
        asked = None if drain is None else drain.asked.get(origin)
        if drain is None or asked is None:
            return  # not asked by this drain
        try:
            ids = check_ids(message.get("sessions"), "sessions")
        except BadState as exc:
            self._reject(f"a decline from node {origin}", exc)
            return
        declined = [asked.pop(i) for i in ids if i in asked]
        drain.declined.add(origin)
        drain.outstanding.difference_update(s.id for s in declined)
        held = self._still_held(declined)
        if held and drain.open_targets():
            self._ask_to_adopt(drain, held)
        log.info(
            "node %s drains too: %d sessions asked of it go %s",
            origin,
            len(held),
            "to the other live nodes" if drain.open_targets() else "to Redis",
        )
        drain.changed.set()

    def _on_adopt(self, origin: str, message: dict[str, Any]) -> None:
        entries = message.get("sessions")
        try:
            adopted = check_adopted(entries)
        except BadState as exc:
            self._reject(f"an adopt from node {origin}", exc)
            return
        if self.node.draining:  # it drains too: the other node asks elsewhere, or parks
            ids = [session_id for session_id, _, _ in adopted]
            self.broker.send_nowait(origin, {"k": "handover.decline", "sessions": ids})
            return
        for session_id, player, seq in adopted:
            if session_id in self._adoptions or self.node.hub.get(session_id) is not None:
                continue
            task = asyncio.get_running_loop().create_task(self._adopt(player, session_id, seq))
            self._adoptions[session_id] = task

    async def _adopt(self, player: str, session_id: str, seq: int) -> bool:
        """Take a session a draining node holds, as a resume with no socket would; then
        answer the asks for it that came meanwhile. Whether a kick dropped it (a resume
        waiting for it is refused too)."""
        kicked = False
        try:
            installed = await self.resume(player, Resume(session_id, seq), adopt=True)
        except Kicked:
            installed, kicked = None, True
        except Exception as exc:  # the resume's own failures fall back; this is a fault
            log.warning("session %s was not taken over: %s", session_id, exc)
            installed = None
        finally:
            self._adoptions.pop(session_id, None)
            for origin, message in self._deferred.pop(session_id, []):
                self._on_ask(origin, message)
        if installed is not None:
            self.stats.adopted += 1
        elif not kicked:  # timed out, gone meanwhile, or a state that did not fit
            self.stats.not_adopted += 1
        return kicked

    async def aclose(self) -> None:
        """Stop the adoptions still under way (a drain of this node waited for them)."""
        tasks = list(self._adoptions.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _window_left(self, session: Session) -> float:
        """How long a resume of `session` may still come, if it may go on on another node
        when this one drains (0: it may not: it ended, its window is over, or frames may
        be lost from its queue, so no resume of it could be served anyway)."""
        if session.state is SessionState.EXPIRED or session.holed_at > session.last_seq:
            return 0.0
        left = self.node.config.limits.resume_window
        if session.detached_at is not None:
            left -= self.node.clock() - session.detached_at
        return max(left, 0.0)

    # --- draining: leave what is still held in Redis -------------------------

    async def park_all(self) -> int:
        """Write each session still held to `npc:handover:<id>` for its resume window."""
        client = self._client()
        if client is None or not self.broker.available:
            return 0
        window = self.node.config.limits.resume_window
        held: list[Session] = []
        pipe = client.pipeline(transaction=True)  # a kick's script sees all of them or none
        for session in self.node.hub.all_sessions():
            left = self._window_left(session)
            message = self._park_message(session) if left > 0 else None
            if message is not None:
                held.append(session)
                pipe.set(PARKED + session.id, msgpack.packb(message), px=max(1, int(left * 1000)))
        for session in held:  # a kick and a listing find them here (for the longest window)
            pipe.sadd(PARKED_OF + session.player, session.id)
            pipe.pexpire(PARKED_OF + session.player, int(window * 1000))
            pipe.hset(SEQS_OF + session.player, session.id, session.last_seq)
            pipe.pexpire(SEQS_OF + session.player, int(window * 1000))
        parked = len(held)
        if parked:
            # A stray key of the wrong type fails its command only: the states (the first
            # `parked` commands) are what a resume needs; the lists serve kicks and listings.
            results = await pipe.execute(raise_on_error=False)
            for at, result in enumerate(results):
                if isinstance(result, Exception):
                    if at < parked:
                        raise result
                    log.warning("a parked session's list was not written: %s", result)
        # Ended here while the write was on its way (a kick, a take, its window): gone.
        ended = [s for s in held if self.node.hub.get(s.id) is not s]
        if ended:
            await self._unpark_ended(client, ended)
        for session in held:  # they are in Redis now, for whichever node the player reaches
            self.node.end_session(session, quiet=True)
        parked -= len(ended)
        self.stats.parked += parked
        return parked

    async def _unpark_ended(self, client: Any, ended: list[Session]) -> None:
        """Drop the parked states of sessions that ended meanwhile: no resume may find
        one (a kick ended it, and counted it: the kick's own drop may come too late)."""
        pipe = client.pipeline(transaction=True)
        for session in ended:
            pipe.delete(PARKED + session.id)
            pipe.srem(PARKED_OF + session.player, session.id)
            pipe.hdel(SEQS_OF + session.player, session.id)
        try:
            async with asyncio.timeout(TIMEOUT):
                await pipe.execute()
        except Exception as exc:  # their windows end them in Redis too
            log.warning("%d sessions ended while parked stay in Redis: %s", len(ended), exc)

    async def forget_parked(self, player: str) -> list[str]:
        """Drop the player's parked sessions (a kick): the ids of those there were (a
        node may count one of them too: one it was parking or unparking). Raises if Redis
        does not answer."""
        client = self._client()
        if client is None:
            return []
        async with asyncio.timeout(TIMEOUT):
            dropped = await client.eval(
                FORGET_PARKED, 2, PARKED_OF + player, SEQS_OF + player, PARKED
            )
        return [reply_text(i) for i in dropped] if isinstance(dropped, list) else []

    async def list_parked(self, player: str) -> list[dict[str, Any]]:
        """The player's parked sessions no node has resumed yet, as a listing shows
        them. Raises if Redis does not answer."""
        client = self._client()
        if client is None:
            return []
        async with asyncio.timeout(TIMEOUT):
            found = await client.eval(LIST_PARKED, 2, PARKED_OF + player, SEQS_OF + player, PARKED)
        if not isinstance(found, list) or len(found) % 2:
            return []
        listed = []
        for raw_id, raw_seq in zip(found[::2], found[1::2], strict=True):
            session, seq = reply_text(raw_id), reply_text(raw_seq)
            if 0 < len(session) <= MAX_ID and seq.isascii() and seq.isdigit() and len(seq) <= 18:
                listed.append({"session": session, "state": "parked", "last_seq": int(seq)})
        return listed

    def _park_message(self, session: Session) -> dict[str, Any] | None:
        return self._export("parked", session, _window_start(session))


def _window_start(session: Session) -> int:
    """The seq after which a resume may start: the replay window, not across a hole."""
    return max(session.last_seq - len(session.replay), session.holed_at)


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
