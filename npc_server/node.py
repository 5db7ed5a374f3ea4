"""One server process: sessions, conversations and the handling of client frames.

Everything here is synchronous apart from the generation tasks that the
conversations own; the socket edge calls in and never waits on it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from npc_server import __version__
from npc_server.admission import ConnectLimiter, TokenBudget
from npc_server.backends import Backend, GenerationRequest, MemoryEntry, create_backend
from npc_server.bans import Bans
from npc_server.brokers import Broker, create_broker
from npc_server.cluster.handover import SessionHandover
from npc_server.cluster.sockets import SocketClaims
from npc_server.config import Config
from npc_server.contexts import ContextStore
from npc_server.events import DrainStarted, EventBus
from npc_server.hub import Hub
from npc_server.memories import MemoryStore, create_memory_store
from npc_server.npcs import NpcConfig
from npc_server.protocol.codes import CloseCode
from npc_server.protocol.frames import Action, Delta, Draining, ServerFrame, TurnStart
from npc_server.registry import TurnRegistry
from npc_server.session import Session, SessionState
from npc_server.tools import ToolRouter
from npc_server.turns import Audience, Conversation, GenerationLimiter, Scheduler, Turn
from npc_server.webhooks import WebhookSender

if TYPE_CHECKING:
    from npc_server.cluster.forward import Caller, Forwarder

# A detached session's end is checked this long after its window (timers never run early,
# and the window is exceeded, not reached).
EXPIRY_SLACK = 0.01

log = logging.getLogger(__name__)
NODE_ID_BYTES = 6  # the random node part of ids: 12 hex digits


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    sessions: int
    attached: int
    players: int
    rooms: int
    memberships: int
    conversations: int
    turns: int
    generations: int
    open_actions: int


class Closable(Protocol):
    finished: asyncio.Event

    def request_close(self, code: CloseCode | None, reason: str = "") -> None: ...

    def tick(self, now: float) -> None: ...


class LoopScheduler:
    """`Scheduler` on the running asyncio loop."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback)


class Node:
    """The state of one server process: who is connected, conversations, turns."""

    def __init__(
        self,
        config: Config,
        npcs: Mapping[str, NpcConfig],
        *,
        clock: Callable[[], float] = time.monotonic,
        scheduler: Scheduler | None = None,
        backends: Mapping[str, Backend] | None = None,
        broker: Broker | None = None,
        memories: MemoryStore | None = None,
    ) -> None:
        self.config = config
        self.npcs = dict(npcs)
        self.clock = clock
        self.scheduler = scheduler or LoopScheduler()
        # One id for the node and its broker (leases, owners and messages name it), and
        # the node part of every id it makes. 48 random bits: a game that keeps event
        # ids for ever meets a repeat once in ~16 million starts (24 bits: ~4,800).
        self.node_id = getattr(broker, "node_id", "") or secrets.token_hex(NODE_ID_BYTES)
        self.broker = broker or create_broker(config.cluster.redis_url, self.node_id)
        self.events = EventBus()
        self.hub = Hub(self.broker)
        limits = config.limits
        self.limiter = GenerationLimiter(limits.max_generations)
        self.budget = (
            TokenBudget(limits.tokens_per_minute_player, clock)
            if limits.tokens_per_minute_player > 0
            else None
        )
        self.backends: dict[str, Backend] = dict(backends or {})
        self.turns = TurnRegistry(on_released=self.forget_if_unused)
        self.contexts = ContextStore(limits.context_bytes_player, self._scope_in_use)
        self._conversations: dict[tuple[str, str], Conversation] = {}
        # Each detached session's end at its window's end (by id; cancelled when it ends
        # another way, so a timer never holds an ended session and its replay).
        self._expiries: dict[str, asyncio.TimerHandle] = {}
        self.draining = False
        self.player_connects = ConnectLimiter(
            limits.connects_per_s_player, limits.connects_burst_player, clock
        )
        self.address_connects = ConnectLimiter(
            limits.connects_per_s_address, limits.connects_burst_address, clock
        )
        self.sockets: set[Closable] = set()
        self._ids = itertools.count(1)
        self.webhooks = WebhookSender(config.game, config.webhook_secret)
        self.tools = ToolRouter(config.game, config.webhook_secret)
        cluster = config.cluster
        self.memories = memories or create_memory_store(cluster.redis_url, cluster.memory_ttl)
        # In cluster mode: routes requests to the nodes that run their conversations.
        self.cluster: Forwarder | None = None
        self._callers: dict[str, Caller] = {}  # turn id -> the other node's session it answers
        # Cluster mode: sessions move between nodes; the socket cap spans them.
        self.handover = SessionHandover(self)
        self.socket_claims = SocketClaims(self)
        self.bans = Bans(clock, self.broker)

    async def start(self) -> None:
        """Connect the broker and, in cluster mode, take this node's part in the cluster."""
        await self.broker.start()
        from npc_server.brokers.redis import RedisBroker

        if isinstance(self.broker, RedisBroker):
            from npc_server.cluster.forward import Forwarder

            self.cluster = Forwarder(self, self.broker)
            await self.cluster.start()

    async def aclose(self) -> None:
        """After the conversations closed (their memory saves are written): disconnect."""
        await self.handover.aclose()
        if self.cluster is not None:
            await self.cluster.aclose()
        await self.memories.aclose()
        await self.broker.aclose()

    def cluster_owner_of(self, entity_id: str) -> str | None:
        """The node that made a turn or action id (and runs it)."""
        from npc_server.cluster.forward import owner_of

        return owner_of(entity_id)

    def remember_caller(self, turn_id: str, caller: Caller) -> None:
        """A turn answers a session on another node: keep what its prompt needs from there."""
        self._callers[turn_id] = caller

    @property
    def health(self) -> str:
        """`/healthz` status: "ok", or "draining" (alive, but going away)."""
        return "draining" if self.draining else "ok"

    @property
    def readiness(self) -> tuple[int, str]:
        """`/readyz` (status code, status): 503 while draining, so no new player comes."""
        return (503, "draining") if self.draining else (200, "ready")

    def new_id(self, prefix: str) -> str:
        """An id unique across the cluster: the node's random id plus a counter."""
        return f"{prefix}-{self.node_id}-{next(self._ids)}"

    def server_info(self) -> dict[str, str]:
        return {"name": self.config.server.name, "version": __version__, "node": self.node_id}

    def statistics(self) -> NodeStatistics:
        """An immutable snapshot of what this process holds."""
        hub = self.hub.statistics()
        sessions = self.hub.all_sessions()
        return NodeStatistics(
            sessions=hub.sessions,
            attached=sum(s.state is SessionState.ATTACHED for s in sessions),
            players=hub.players,
            rooms=hub.rooms,
            memberships=hub.memberships,
            conversations=len(self._conversations),
            turns=self.turns.turn_count,
            generations=self.limiter.active,
            open_actions=self.turns.action_count,
        )

    # --- sessions ---------------------------------------------------------

    def open_session(self, player: str, session_id: str | None = None) -> Session:
        """A new session for a player (not yet attached to a socket); `session_id`:
        one handed over from another node."""
        limits = self.config.limits.session_limits()
        session_id = session_id or self.new_id("s")
        session = Session(session_id, player, limits, self.clock(), self.turns.note_written)
        session.on_ended = self._ended_itself
        self.hub.add(session)
        self._end_when_window_ends(session)  # one adopted from a draining node stays detached
        return session

    def find_resumable(self, player: str, session_id: str) -> Session | None:
        """The session to resume, if it is still held and belongs to `player`."""
        session = self.hub.get(session_id)
        if session is None or session.player != player or session.state is SessionState.EXPIRED:
            return None
        if session.expired_at(self.clock()):
            self.end_session(session)
            return None
        return session

    def attached_sessions(self, player: str) -> list[Session]:
        return [s for s in self.hub.sessions_of(player) if s.state is SessionState.ATTACHED]

    def snapshot(self, session: Session, room: str | None = None) -> None:
        """Queue for `session` the active turns it should see so far (all, or one room's).

        Each turn as `turn.start` and one `delta` at 0 with its text so far, then
        any action still waiting for the player's approval.
        """
        if self.cluster is not None:  # and what other nodes run for it
            self.cluster.catch_up(session, room)

        def wanted(audience: Audience) -> bool:
            return (room is None or audience.room == room) and self.sees(session, audience)

        for frame in self.catch_up_frames(wanted):
            self.hub.send_to_session(session, frame)

    def sees(self, caller: Session | Caller, audience: Audience) -> bool:
        """Whether a session's player is in a conversation's audience."""
        if audience.room is not None:
            return self.in_room(audience.room, caller)
        return audience.player == caller.player

    def in_room(self, room: str, caller: Session | Caller) -> bool:
        """Whether a session's player is a member of `room` (as its own node knows)."""
        if isinstance(caller, Session):
            return self.hub.is_member(room, caller.player)
        return room in caller.rooms

    def detach_session(self, session: Session, owner: object, resumable: bool) -> None:
        """Socket `owner` closed: keep the session for a resume, or end it."""
        if session.owner is not owner:
            return  # another socket took the session over
        if resumable and session.state is not SessionState.EXPIRED:
            session.detach(self.clock())
            if self.cluster is not None:
                self.cluster.session_detached(session)
            self._end_when_window_ends(session)
        else:
            self.end_session(session)

    def _ended_itself(self, session: Session) -> None:
        """A held session outgrew its bounds and ended: forget it (its rooms see the
        player leave, listings and says stop finding it) once the push that overflowed it
        is done (it may be one of a room's fan-out)."""
        try:
            asyncio.get_running_loop().call_soon(self.end_session, session)
        except RuntimeError:  # no loop (a test's fake clock): at once
            self.end_session(session)

    def _end_when_window_ends(self, session: Session) -> None:
        """End a detached session as its resume window ends, not at the next sweep (up to
        `SWEEP_INTERVAL` later: its rooms saw the player for seconds more). The sweep stays
        for a clock the loop does not drive (tests) and for sessions detached elsewhere."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        earlier = self._expiries.pop(session.id, None)
        if earlier is not None:
            earlier.cancel()
        delay = session.limits.resume_window + EXPIRY_SLACK
        self._expiries[session.id] = loop.call_later(delay, self._expire_if_due, session)

    def hold_for_resume(self, session: Session) -> None:
        """A hello is resuming `session`: its window starts again (and its timer), so the
        window's end cannot end it while the hello awaits the cluster."""
        if session.state is SessionState.DETACHED:
            session.hold_for_resume(self.clock())
            self._end_when_window_ends(session)

    def _expire_if_due(self, session: Session) -> None:
        self._expiries.pop(session.id, None)  # this timer's own entry: a newer one cancels it
        if session.state is SessionState.DETACHED and session.expired_at(self.clock()):
            self.end_session(session)

    def end_session(
        self, session: Session, code: CloseCode = CloseCode.GOING_AWAY, *, quiet: bool = False
    ) -> None:
        """Forget a session for good (closing its socket with `code`), and the player's
        rooms and context with its last one. `quiet`: the session moved to another
        node, which keeps it in its rooms (no `left` presence)."""
        session.expire(code)
        expiry = self._expiries.pop(session.id, None)
        if expiry is not None:
            expiry.cancel()
        if self.hub.remove(session):
            self.handover.session_ended(session)
            rooms = self.hub.leave_all(session.player, quiet=quiet)
            self.contexts.forget(session.player, trusted=self.cluster is None)
            audiences = [Audience(player=session.player), *(Audience(room=r) for r in rooms)]
            for npc_id in self.npcs:
                for audience in audiences:
                    conversation = self._conversations.get((npc_id, audience.key))
                    if conversation is not None:
                        self.forget_if_unused(conversation)

    def announce_drain(self, retry_after: float) -> None:
        """Tell every attached session to reconnect elsewhere."""
        attached = [s for s in self.hub.all_sessions() if s.state is SessionState.ATTACHED]
        self.events.emit(DrainStarted(len(attached)))
        for session in attached:
            self.hub.send_to_session(session, Draining(retry_after=retry_after))

    def watch_interval(self) -> float:
        """How often the watchdog ticks: fine enough for the heartbeat and write timeout."""
        limits = self.config.limits
        return min(1.0, limits.heartbeat / 4, limits.write_timeout / 4)

    def tick_sockets(self) -> None:
        """One watchdog pass over every socket (write stalls, heartbeats)."""
        now = self.clock()
        for socket in list(self.sockets):
            socket.tick(now)

    def expire_sessions(self) -> int:
        """End detached sessions past their resume window; returns how many."""
        now = self.clock()
        stale = [
            s
            for s in self.hub.all_sessions()
            if s.state is not SessionState.ATTACHED and s.expired_at(now)
        ]
        for session in stale:
            self.end_session(session)
        return len(stale)

    # --- conversations ----------------------------------------------------

    def backend_for(self, npc: NpcConfig) -> Backend:
        backend = self.backends.get(npc.id)
        if backend is None:
            config = self.config
            backend = create_backend(npc, config.backend_defaults, config.backend_overrides)
            self.backends[npc.id] = backend
        return backend

    def conversation(self, npc: NpcConfig, audience: Audience) -> Conversation:
        """The conversation of `npc` with `audience`, made on first use."""
        key = (npc.id, audience.key)
        conversation = self._conversations.get(key)
        if conversation is None:
            conversation = Conversation(
                npc,
                audience,
                backend=self.backend_for(npc),
                publisher=self.broker,
                limiter=self.limiter,
                scheduler=self.scheduler,
                make_request=self._request_for(npc),
                new_id=self.new_id,
                index=self.turns,
                meter=self.budget,
                events=self.events,
                clock=self.clock,
                turn_timeout=self.config.limits.turn_timeout,
                on_action=self.webhooks.notify if self.webhooks.enabled else None,
                tools=self.tools,
                memories=self.memories,
            )
            self._conversations[key] = conversation
        return conversation

    def find_conversation(self, npc_id: str, audience: Audience) -> Conversation | None:
        return self._conversations.get((npc_id, audience.key))

    def all_conversations(self) -> list[Conversation]:
        return list(self._conversations.values())

    def _request_for(
        self, npc: NpcConfig
    ) -> Callable[[Turn, tuple[MemoryEntry, ...]], GenerationRequest]:
        def make(turn: Turn, history: tuple[MemoryEntry, ...]) -> GenerationRequest:
            caller = self._callers.pop(turn.id, None)
            if caller is None:
                context = self.contexts.for_npc(turn.player, npc.id)
                members = self.hub.members(turn.room) if turn.room is not None else ()
                trusted = self.contexts.trusted.for_npc(turn.player, turn.room, npc.id)
            else:  # the player is on another node, which sent these with the say
                context, members, trusted = caller.context, caller.members, caller.trusted
            seed = next(self._ids)
            return GenerationRequest(
                npc,
                turn.player,
                turn.text_in,
                history,
                context,
                turn.room,
                members,
                seed,
                trusted=trusted,
                caused_by=turn.caused_by,
                event=turn.event,
            )

        return make

    def _scope_in_use(self, scope: str) -> bool:
        """Whether a trusted context's scope is in play here: the player has a session
        (connected or held for a resume), the room has members, or a conversation of
        that audience runs here (in a cluster, one a game say claimed for a node with
        no member: its turns read this node's copy). A scope is its audience's key."""
        kind, _, name = scope.partition(":")
        present = self.hub.room_exists(name) if kind == "room" else self.hub.is_online(name)
        return present or any((npc, scope) in self._conversations for npc in self.npcs)

    def forget_if_unused(self, conversation: Conversation) -> None:
        """Drop an idle conversation whose audience has no session here (and, in a
        cluster, give it up, so the next say may run it on any node)."""
        audience = conversation.audience
        present = (
            self.hub.room_exists(audience.room)
            if audience.room is not None
            else audience.player is not None and self.hub.is_online(audience.player)
        )
        if present or not conversation.idle or conversation.open_actions:
            return
        key = (conversation.npc.id, audience.key)
        if self._conversations.get(key) is not conversation:
            return
        del self._conversations[key]
        for turn_id in [t for t in self._callers if self.turns.get(t) is None]:
            del self._callers[turn_id]  # queued turns that ended before they started
        if self.cluster is not None:
            self.cluster.leases.release_nowait(conversation.npc.id, audience.key)

    def turns_under_way_for(self, session: Session) -> list[tuple[str, str]]:
        """The turns under way that `session` is in, run here or relayed, with channels."""
        turns = [
            (turn.id, conversation.channel)
            for conversation, turn in self.turns.active()
            if self.sees(session, conversation.audience)
        ]
        if self.cluster is not None:
            channels = {f"player:{session.player}"}
            channels.update(f"room:{room}" for room in self.hub.rooms_of(session.player))
            turns.extend((t.id, t.channel) for t in self.cluster.remote.open_on(channels))
        return turns

    def catch_up_frames(self, wanted: Callable[[Audience], bool]) -> list[ServerFrame]:
        """What a newcomer to the audiences `wanted` picks needs of this node's turns:
        each active turn as `turn.start` and one `delta` at 0 with its text so far,
        then the actions still waiting for approval."""
        frames: list[ServerFrame] = []
        for conversation, turn in self.turns.active():
            if wanted(conversation.audience):
                start = TurnStart(
                    turn.id,
                    turn.npc,
                    turn.player,
                    turn.room,
                    turn.reply_to,
                    turn.caused_by,
                    turn.event,
                )
                frames.append(start)
                if turn.chars:
                    frames.append(Delta(turn.id, turn.text, 0))
        for conversation, turn, action in self.turns.open_actions():
            if action.approval and wanted(conversation.audience):
                frames.append(Action(turn.id, action.id, action.name, action.args, action.at, True))
        return frames

    def audience_snapshot(self, audience: Audience) -> list[ServerFrame]:
        """`catch_up_frames` for one audience (another node's newcomer asks for it)."""
        return self.catch_up_frames(lambda candidate: candidate == audience)

    # --- watching over SSE ---------------------------------------------------

    def room_active(self, room: str) -> bool:
        """Whether a turn of `room` is under way on this node."""
        return any(c.audience.room == room for c, _ in self.turns.active())

    def room_snapshot(self, room: str) -> list[ServerFrame]:
        """What a watcher of `room` needs to catch up, as `snapshot` sends a member."""
        return self.catch_up_frames(lambda audience: audience.room == room)
