"""Requests for a conversation another node runs: routed there, answered here.

A conversation (an NPC with a player, or with a room) runs on one node at a
time, its owner (`leases`). A `say` for a conversation this node does not hold
claims it: free, or owned by a dead node, it runs here; otherwise the say goes
to the owner's node channel. `interrupt`, `seen` and `act` name a turn or an
action whose id carries the node that made it, and go there. The owner handles
a forwarded request as its own client's, for a `Caller` that stands for the
requesting session: its answers (`ack`, `error`) are published on that
session's channel, which reaches the session wherever it is; the turn's
frames go on the conversation's player or room channel as always.

What the owner cannot know, the requesting node sends with the request and the
owner trusts (nodes of one cluster trust each other's checks, not their bytes:
every message is validated as a client frame is): the player's rooms, the
contexts for the NPC, the room's members, and how much of each open turn it
relayed to its sockets (the memory cut of an interrupt).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack

from npc_server.backends.base import MemoryEntry
from npc_server.brokers.base import session_channel
from npc_server.cancelling import cancel_and_wait
from npc_server.cluster.late_starts import LateStarts
from npc_server.cluster.leases import CHECK_EVERY, LEASE_GRACE, TIMEOUT, Leases, owner_key
from npc_server.cluster.remote_turns import RemoteTurn, RemoteTurns
from npc_server.cluster.room_gaps import RoomGaps
from npc_server.cluster.scatter import NodeDirectory
from npc_server.cluster.trusted import TrustedCopies
from npc_server.protocol.codec import FrameError, decode_client_frame, fits_context
from npc_server.protocol.codes import ErrorCode
from npc_server.protocol.frames import (
    Ack,
    ClientFrame,
    Error,
    RequestId,
    Say,
    ServerFrame,
)
from npc_server.turn import Audience

if TYPE_CHECKING:
    from npc_server.brokers.redis import RedisBroker
    from npc_server.node import Node
    from npc_server.npcs import NpcConfig
    from npc_server.session import Session

log = logging.getLogger(__name__)

MAX_HOPS = 2  # a say re-routed more often than this (owners changing under it) is refused
RETRY_AFTER = 1.0
MAX_ROOMS = 256
MAX_MEMBERS = 10_000
MAX_WAITING = 10_000


@dataclass(frozen=True, slots=True)
class Caller:
    """A session on another node, as the node that runs its conversation sees it."""

    id: str
    player: str
    rooms: frozenset[str] = frozenset()
    context: dict[str, Any] = field(default_factory=dict)
    trusted: dict[str, Any] = field(default_factory=dict)
    members: tuple[str, ...] = ()


class BadMessage(ValueError):
    """A message from another node that does not fit its kind."""


def owner_of(entity_id: str) -> str | None:
    """The node in an id made by `Node.new_id` (`<prefix>-<node>-<n>`), if it is one."""
    parts = entity_id.split("-")
    return parts[1] if len(parts) == 3 and parts[1] else None


class Forwarder:
    """Routes this node's requests to owners and serves what other nodes route here."""

    def __init__(self, node: Node, broker: RedisBroker) -> None:
        self.node = node
        self.broker = broker
        self.node_id = broker.node_id
        self.leases = Leases(broker.client, self.node_id)
        self.remote = RemoteTurns(broker.deliver_local_nowait, self._orphaned)
        self.late = LateStarts(node, broker, self.remote)
        self.gaps = RoomGaps(broker)
        self.remote.on_missing = self.late.missing
        self._tasks: set[asyncio.Task[None]] = set()
        self._checker: asyncio.Task[None] | None = None
        self.rejected = 0
        # Requests sent to other nodes and not answered yet: (session, request id) ->
        # (the node, what to do if that node dies first, whether Redis named that node:
        # a say's owner had a lease, while a turn's id is what a client sent).
        self._waiting: dict[tuple[str, RequestId], tuple[str, Callable[[], None], bool]] = {}
        broker.observe_remote(self._observe)
        broker.add_state_listener(self._link_changed)
        broker.on_message("say", self._on_say)
        broker.on_message("turn-request", self._on_turn_request)
        broker.on_message("gap", self._on_gap)
        broker.on_message("catch-up", self._on_catch_up)
        broker.on_message("answer", self._on_answer)
        broker.on_message("api", self._on_api)
        self._asked = 0
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._leases_trusted_at = 0.0  # time.monotonic(): before it, no node is judged dead
        # The game server's API across nodes: who is alive, and its trusted contexts.
        self.directory = NodeDirectory(broker.client, self.node_id)
        self.trusted_copies = TrustedCopies(node, broker.client)
        # Conversations whose first forwarded say waits for their trusted context: the
        # says forwarded for them meanwhile, run after it in the order they came.
        self._starting: dict[tuple[str, str], list[tuple[str, int, dict[str, Any]]]] = {}

    async def start(self) -> None:
        await self.leases.start()
        await self.directory.start()
        await self.trusted_copies.start()
        self._checker = asyncio.create_task(self._check_forever(), name="cluster-check")

    async def aclose(self) -> None:
        if self._checker is not None:
            await cancel_and_wait([self._checker])
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.gaps.close_nowait()
        await self.trusted_copies.aclose()
        await self.directory.aclose()
        await self.leases.aclose()

    def statistics(self) -> dict[str, int]:
        """For /healthz: turns relayed from other nodes now, requests waiting on
        other nodes, messages from them that were dropped as malformed, and trusted
        contexts dropped as malformed (read from Redis) or not applied as older, and
        rooms told of a gap in their talk from other nodes, or not told again."""
        gaps = self.gaps.statistics()
        return {
            "relayed_turns": len(self.remote),
            "waiting": len(self._waiting),
            "rejected": self.rejected + self.late.rejected,
            "late_starts": self.late.asked,
            "trusted_rejected": self.trusted_copies.rejected,
            "trusted_stale": self.trusted_copies.stale,
            "room_gaps": gaps.told,
            "room_gaps_merged": gaps.merged,
        }

    # --- this node's requests ---------------------------------------------------

    def route_say(
        self, caller: Any, frame: Say, npc: NpcConfig, audience: Audience, hops: int = 0
    ) -> None:
        """Run `frame` here if this node may own the conversation, else at its owner.

        Without Redis a player's own conversation runs here (it may not be alone on
        the cluster then, but the player is served); a room's is `unavailable`.
        """
        if self.broker.available:
            self._spawn(self._route_say(caller, frame, npc, audience, hops))
        elif audience.room is None:
            from npc_server.handlers import say_claimed

            say_claimed(self.node, caller, frame, npc, audience)
        else:
            self._refuse(caller, frame, "rooms are unavailable; try again")

    async def _route_say(
        self, caller: Any, frame: Say, npc: NpcConfig, audience: Audience, hops: int
    ) -> None:
        try:
            owner = await self.leases.claim(npc.id, audience.key)
        except Exception as exc:
            log.warning("say for %s not routed: Redis did not answer (%s)", npc.id, exc)
            self._refuse(caller, frame, "the cluster cannot be reached; try again")
            return
        if owner == self.node_id:
            from npc_server.handlers import say_claimed

            say_claimed(self.node, caller, frame, npc, audience)
        elif hops >= MAX_HOPS:
            self._refuse(caller, frame, "the NPC is moving between servers; try again")
        else:
            self.broker.send_nowait(owner, self._say_message(caller, frame, npc, audience, hops))
            # Its owner may have died a moment ago: then the say is claimed again.
            self._wait(
                owner,
                caller,
                frame,
                lambda: self.route_say(caller, frame, npc, audience),
                claimed=True,
            )

    def _say_message(
        self, caller: Any, frame: Say, npc: NpcConfig, audience: Audience, hops: int
    ) -> dict[str, Any]:
        node = self.node
        player = caller.player
        if isinstance(caller, Caller):  # passing through: what its own node sent
            context, trusted, members = caller.context, caller.trusted, list(caller.members)
        else:
            context = node.contexts.for_npc(player, npc.id)
            trusted = node.contexts.trusted.for_npc(player, frame.room, npc.id)
            members = list(node.hub.members(frame.room)) if frame.room is not None else []
        return {
            **self._caller_fields(caller),
            "k": "say",
            "hops": hops + 1,
            "frame": _frame_map(frame),
            "context": context,
            "trusted": trusted,
            "members": members[:MAX_MEMBERS],
            "written": self.remote.written_on(audience.key),
        }

    def route_turn_request(self, caller: Any, frame: ClientFrame, node_id: str) -> None:
        """Send an `interrupt`, `seen`, `act` or `tool.result` to the node that runs its turn."""
        turn = getattr(frame, "turn", None)
        relayed = self.remote.get(turn) if isinstance(turn, str) else None
        message = {
            **self._caller_fields(caller),
            "k": "turn-request",
            "frame": _frame_map(frame),
            "written": relayed.chars if relayed is not None else 0,
        }
        self.broker.send_nowait(node_id, message)
        code = (
            ErrorCode.UNKNOWN_ACTION
            if hasattr(frame, "action")
            else ErrorCode.UNKNOWN_CALL
            if hasattr(frame, "call")
            else ErrorCode.UNKNOWN_TURN
        )
        self._wait(node_id, caller, frame, lambda: self._answer_gone(caller, frame, code))

    def _wait(
        self,
        node_id: str,
        caller: Any,
        frame: ClientFrame,
        if_gone: Callable[[], None],
        *,
        claimed: bool = False,
    ) -> None:
        if frame.id is not None and not isinstance(caller, Caller):
            if len(self._waiting) >= MAX_WAITING:  # answers lost while their node lives
                del self._waiting[next(iter(self._waiting))]
            self._waiting[(caller.id, frame.id)] = (node_id, if_gone, claimed)

    def _answer_gone(self, caller: Any, frame: ClientFrame, code: ErrorCode) -> None:
        error = Error(code, "its server stopped", frame.id)
        self.broker.publish_nowait(session_channel(caller.id), error)

    def _observe(self, origin: str, number: int, channel: str, frame: ServerFrame) -> bool:
        kind = type(frame)
        if (kind is Ack or kind is Error) and self._waiting:
            self._waiting.pop((channel.removeprefix("session:"), frame.id), None)  # type: ignore[attr-defined]
        return self.remote.observe(origin, number, channel, frame)

    def _caller_fields(self, caller: Any) -> dict[str, Any]:
        if isinstance(caller, Caller):
            rooms: list[str] = sorted(caller.rooms)
        else:
            rooms = sorted(self.node.hub.rooms_of(caller.player))
        return {"session": caller.id, "player": caller.player, "rooms": rooms[:MAX_ROOMS]}

    def _refuse(self, caller: Any, frame: ClientFrame, message: str) -> None:
        error = Error(ErrorCode.UNAVAILABLE, message, frame.id, RETRY_AFTER)
        self.broker.publish_nowait(session_channel(caller.id), error)

    def catch_up(self, session: Any, room: str | None) -> None:
        """A new session (or a join, `room`): the turns other nodes run for it, from what
        this node relays already, and from the turns' nodes for the rest."""
        player = session.player
        rooms = [room] if room is not None else sorted(self.node.hub.rooms_of(player))
        audiences = [f"room:{r}" for r in rooms]
        if room is None:
            audiences.append(f"player:{player}")
        frames, known = self.remote.snapshot(set(audiences))
        for frame in frames:
            self.node.hub.send_to_session(session, frame)
        if self.broker.available:
            self._spawn(self._ask_owners(session.id, player, audiences, known))

    async def _ask_owners(
        self, session_id: str, player: str, audiences: list[str], known: list[str]
    ) -> None:
        pairs = [
            (audience, owner_key(npc, audience)) for audience in audiences for npc in self.node.npcs
        ]
        keys = [key for _, key in pairs]
        try:
            async with asyncio.timeout(TIMEOUT):
                owners = await self.broker.client.mget(keys)
        except Exception as exc:
            log.warning("no catch-up from other nodes for %s: %s", session_id, exc)
            return
        wanted: dict[str, set[str]] = {}
        for (audience, _), owner in zip(pairs, owners, strict=True):
            node = owner.decode(errors="replace") if isinstance(owner, bytes) else None
            if node is not None and node != self.node_id:
                wanted.setdefault(node, set()).add(audience)
        for node, keys_of in wanted.items():
            message = {
                "k": "catch-up",
                "session": session_id,
                "player": player,
                "audiences": sorted(keys_of)[:MAX_ROOMS],
                "known": known[:MAX_ROOMS],
            }
            self.broker.send_nowait(node, message)

    async def ask(self, node_id: str, message: Mapping[str, Any]) -> dict[str, Any]:
        """Send a request to another node and wait (at most `TIMEOUT`) for its answer;
        `TimeoutError` if none comes (the node died, or Redis is away). To this node
        itself, the request runs here as one from another node would, in the same order
        (a game say behind a first say still reading), with time for that read."""
        self._asked += 1
        ask = self._asked
        answer = asyncio.get_running_loop().create_future()
        self._answers[ask] = answer
        here = node_id == self.node_id
        try:
            if here:
                self._on_api(node_id, {**message, "ask": ask})
            else:
                self.broker.send_nowait(node_id, {**message, "ask": ask})
            async with asyncio.timeout(2 * TIMEOUT if here else TIMEOUT):
                result: dict[str, Any] = await answer
                return result
        finally:
            self._answers.pop(ask, None)

    def starting(self, npc_id: str, audience_key: str) -> bool:
        """Whether game says for this conversation wait here behind its first one."""
        return (npc_id, audience_key) in self._starting

    def _answer(self, origin: str, ask: int, answer: dict[str, Any]) -> None:
        message = {**answer, "k": "answer", "ask": ask}
        if origin == self.node_id:  # a request of this node's own API (`ask`)
            self._on_answer(origin, message)
        else:
            self.broker.send_nowait(origin, message)

    def _on_answer(self, origin: str, message: dict[str, Any]) -> None:
        try:
            waiting = self._answers.get(_int(message, "ask"))
        except BadMessage as exc:
            self._rejected(exc)
            return
        if waiting is not None and not waiting.done():
            waiting.set_result(message)

    def _on_api(self, origin: str, message: dict[str, Any]) -> None:
        """A game server's request that another node received for a turn here."""
        from npc_server.api import answer_forwarded

        try:
            ask = _int(message, "ask")
        except BadMessage as exc:
            self._rejected(exc)
            return
        if message.get("op") == "say":
            self._api_say(origin, ask, message)
            return
        answer = answer_forwarded(self.node, message)
        self._answer(origin, ask, answer)

    def _api_say(self, origin: str, ask: int, message: dict[str, Any]) -> None:
        from npc_server.api import answer_forwarded

        key = (str(message.get("npc")), str(message.get("audience")))
        behind = self._starting.get(key)
        if behind is not None:
            behind.append((origin, ask, message))
        elif self._new_conversation(message):
            self._starting[key] = []
            task = self._spawn(self._answer_first_say(origin, ask, message))
            # Also if the first say failed, or its task never ran: the others go on.
            task.add_done_callback(lambda done: self._after_first_say(key, done))
        else:
            answer = answer_forwarded(self.node, message)
            self._answer(origin, ask, answer)

    def _new_conversation(self, message: dict[str, Any]) -> bool:
        """A forwarded say for a conversation this node does not run yet (checked again,
        and answered, by `answer_forwarded`)."""
        npc = message.get("npc")
        try:
            audience = _audience(_str(message, "audience"))
        except BadMessage:
            return False
        return npc in self.node.npcs and self.node.find_conversation(str(npc), audience) is None

    async def _answer_first_say(self, origin: str, ask: int, message: dict[str, Any]) -> None:
        # The conversation starts here on another node's claim: this node may have no copy
        # of the audience's trusted context (it started after the post, and the player
        # never attached here). Read it first; later says find it kept current here.
        from npc_server.api import answer_forwarded

        await self.trusted_copies.load(str(message["audience"]))
        answer = answer_forwarded(self.node, message)
        self._answer(origin, ask, answer)

    def _after_first_say(self, key: tuple[str, str], done: asyncio.Task[None]) -> None:
        """The says forwarded while a conversation's first say read its trusted context,
        in the order they came (one starts the conversation if the first did not). A
        node closing drops them: their nodes answer their callers 503 after the wait."""
        behind = self._starting.pop(key, [])
        if done.cancelled():
            return
        failed = done.exception()
        if failed is not None:  # its caller's node answers 503 after the wait
            log.error("a forwarded say for %s failed", key, exc_info=failed)
        for later in behind:
            self._api_say(*later)

    # --- what other nodes route here ----------------------------------------------

    def _on_catch_up(self, origin: str, message: dict[str, Any]) -> None:
        try:
            session, player = _str(message, "session"), _str(message, "player")
            audiences = [_audience(a) for a in _strings(message, "audiences", MAX_ROOMS)]
            known = set(_strings(message, "known", MAX_ROOMS, required=False))
        except BadMessage as exc:
            self._rejected(exc)
            return
        channel = session_channel(session)
        for audience in audiences:
            if audience.player is not None and audience.player != player:
                continue  # a player catches up on their own conversations only
            for frame in self.node.audience_snapshot(audience):
                if getattr(frame, "turn", None) not in known:
                    self.broker.publish_nowait(channel, frame)

    def _on_say(self, origin: str, message: dict[str, Any]) -> None:
        try:
            caller, frame = self._decode(origin, message)
            hops = _int(message, "hops")
            written = _map(message, "written")
        except BadMessage as exc:
            self._rejected(exc)
            return
        for turn_id, chars in written.items():
            entry = self.node.turns.get(turn_id) if isinstance(chars, int) else None
            if entry is not None:
                entry[1].note_written(chars)
        from npc_server.handlers import handle_forwarded

        handle_forwarded(self.node, caller, frame, hops)

    def _on_turn_request(self, origin: str, message: dict[str, Any]) -> None:
        try:
            caller, frame = self._decode(origin, message)
            written = _int(message, "written")
        except BadMessage as exc:
            self._rejected(exc)
            return
        turn = getattr(frame, "turn", None)
        entry = self.node.turns.get(turn) if isinstance(turn, str) else None
        if entry is not None:
            entry[1].note_written(written)
        from npc_server.handlers import handle_forwarded

        handle_forwarded(self.node, caller, frame, MAX_HOPS)

    def _decode(self, origin: str, message: dict[str, Any]) -> tuple[Caller, ClientFrame]:
        try:
            session, player = _str(message, "session"), _str(message, "player")
            rooms = frozenset(_strings(message, "rooms", MAX_ROOMS))
            members = tuple(_strings(message, "members", MAX_MEMBERS, required=False))
            caller = Caller(
                session,
                player,
                rooms,
                _context(message, "context"),
                _context(message, "trusted"),
                members,
            )
            frame = decode_client_frame(msgpack.packb(_map(message, "frame")))
        except (BadMessage, FrameError, TypeError, ValueError) as exc:
            raise BadMessage(f"a {message.get('k')!r} from node {origin}: {exc}") from None
        return caller, frame

    def _on_gap(self, origin: str, message: dict[str, Any]) -> None:
        try:
            channel, upto = _str(message, "channel"), _int(message, "upto")
        except BadMessage as exc:
            self._rejected(exc)
            return
        self.remote.end_on(origin, channel, upto)
        if channel.startswith("room:"):  # its talk too: the members here missed some
            self._mark_holes(self.node.hub.members(channel.removeprefix("room:")))
            self.gaps.tell_nowait([channel])

    def session_detached(self, session: Session) -> None:
        """A socket left while the link to Redis is down: what other nodes publish for
        the session's rooms meanwhile is lost from its queue."""
        if not self.broker.connected and self.node.hub.rooms_of(session.player):
            session.mark_hole()

    def _mark_holes(self, players: Iterable[str] | None = None) -> None:
        """Sessions in rooms (of `players`, or all) may miss what other nodes publish:
        a resume that would replay across that gets a new session and a snapshot."""
        hub = self.node.hub
        sessions = (
            hub.all_sessions()
            if players is None
            else [s for player in players for s in hub.sessions_of(player)]
        )
        for session in sessions:
            if hub.rooms_of(session.player):
                session.mark_hole()

    def _rejected(self, exc: BadMessage) -> None:
        self.rejected += 1
        log.warning("dropped %s", exc)

    # --- watching the nodes whose turns this node relays ----------------------------

    def _link_changed(self, connected: bool) -> None:
        # Room talk from other nodes may be lost while the link is down (turns end), and
        # so may what a resume under way here was waiting for.
        self._mark_holes()
        self.node.handover.link_changed()
        if not connected:  # frames of every remote turn may be lost from now on
            self.remote.end_all()
            return
        # The loss lasts until Redis delivers this node's channels again: told then (a
        # link lost again first drops this wait; its return waits anew).
        self.broker.when_subscribed(self._delivered_again, lambda: None)
        # A Redis that restarted has lost every lease and owner key: renew this node's at
        # once, and judge no other node dead before it had the time to renew its own.
        self._leases_trusted_at = time.monotonic() + LEASE_GRACE
        held = [(c.npc.id, c.audience.key) for c in self.node.all_conversations()]
        self._spawn(self._reassert(held))

    def _delivered_again(self) -> None:
        """Redis delivers this node's channels again after its link was down: the rooms'
        sockets and watchers here are told (once: `RoomGaps`) that talk from other nodes
        may be missing, and no resume replays across what the sessions missed."""
        self._mark_holes()
        self.gaps.tell_nowait(self.broker.local_channels("room:"))

    async def _reassert(self, held: list[tuple[str, str]]) -> None:
        try:
            await self.leases.reassert(held)
        except Exception as exc:  # the regular renewal tries again
            log.warning("lease and %d owner keys not reasserted: %s", len(held), exc)

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY)
            self.gaps.sweep_nowait()
            await self.check_once()

    @property
    def leases_trusted(self) -> bool:
        """Whether a missing lease means a dead node: not within `LEASE_GRACE` of Redis
        coming back (a restarted Redis lost every lease until each node renews)."""
        return time.monotonic() >= self._leases_trusted_at

    async def check_once(self) -> None:
        """End the turns relayed here whose nodes' leases lapsed."""
        if time.monotonic() < self._leases_trusted_at:
            return
        waited_on = {node for node, _, _ in self._waiting.values()}
        # The nodes known to have run: their frames reached this node, or Redis named
        # them (a say's owner). Any other is only a name in an id a client sent.
        lived = self.remote.origins() | self.remote.queued_from()
        lived.update(node for node, _, claimed in self._waiting.values() if claimed)
        watched = lived | waited_on
        dead = await self.leases.dead(watched - {self.node_id})
        if not dead:
            return
        ended = self.remote.end_from(dead)
        stopped = sorted(dead & lived)
        if stopped:  # each once: what they ran here ends now, and nothing names them again
            log.warning("nodes %s stopped; %d of their turns ended here", stopped, len(ended))
        gone = [key for key, (node, _, _) in self._waiting.items() if node in dead]
        for key in gone:
            _, if_gone, _ = self._waiting.pop(key)
            if_gone()

    def _orphaned(self, turn: RemoteTurn) -> None:
        self._spawn(self._remember_cut(turn))

    async def _remember_cut(self, turn: RemoteTurn) -> None:
        """What reached the players of a dead node's turn stays in the NPC's memory: one
        node (the first to claim the cut) adds it."""
        npc = self.node.npcs.get(turn.npc)
        if npc is None or not turn.chars:
            return
        try:
            async with asyncio.timeout(TIMEOUT):
                first = await self.broker.client.set(f"npc:cut:{turn.id}", b"1", nx=True, px=60_000)
        except Exception as exc:
            log.warning("the cut of %s was not remembered: %s", turn.id, exc)
            return
        if not first:
            return
        entry = MemoryEntry("npc", npc.id, turn.text)
        audience = (
            Audience(room=turn.room) if turn.room is not None else Audience(player=turn.player)
        )
        live = self.node.find_conversation(npc.id, audience)
        if live is not None:  # its next save would replace an append: add it there
            live.memory.add(entry)
        elif not await self.node.memories.append(npc.id, audience.key, [entry], npc.memory_chars):
            log.warning(
                "the cut of %s was not remembered: the memory store did not answer", turn.id
            )

    def spawn(self, coroutine: Any) -> asyncio.Task[None]:
        """Run `coroutine` as one of this node's cluster tasks (awaited on close)."""
        return self._spawn(coroutine)

    def _spawn(self, coroutine: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _frame_map(frame: ClientFrame) -> dict[str, Any]:
    body = asdict(frame)
    body["t"] = frame.T
    return {k: v for k, v in body.items() if v is not None}


def _str(message: Mapping[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise BadMessage(f"{key} must be a non-empty string")
    return value


def _audience(key: str) -> Audience:
    audience = Audience.from_key(key)
    if audience is None:
        raise BadMessage(f"not an audience: {key!r:.80}")
    return audience


def _int(message: Mapping[str, Any], key: str) -> int:
    value = message.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadMessage(f"{key} must be an integer >= 0")
    return value


def _map(message: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = message.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise BadMessage(f"{key} must be a map with string keys")
    return value


def _context(message: Mapping[str, Any], key: str) -> dict[str, Any]:
    """A caller's context as the prompt reads it: bounded and keyed as a client's is."""
    value = _map(message, key)
    if not fits_context(value):
        raise BadMessage(f"{key} is not a context a client could set")
    return value


def _strings(
    message: Mapping[str, Any], key: str, limit: int, *, required: bool = True
) -> list[str]:
    value = message.get(key, None if required else [])
    if not isinstance(value, list) or len(value) > limit:
        raise BadMessage(f"{key} must be a list of at most {limit}")
    if not all(isinstance(v, str) for v in value):
        raise BadMessage(f"{key} must hold strings")
    return value
