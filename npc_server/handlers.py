"""Handlers of client requests after `hello`: one function per frame type.

Each handler answers the requesting session (`ack`/`error`) and reaches
other players only through the hub; turns, actions and contexts are reached
through their registries' methods. `Refused` becomes `error{id}`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from npc_server.cluster.forward import Caller
from npc_server.cluster.rosters import roster
from npc_server.events import Limited
from npc_server.node import Node
from npc_server.npcs import NpcConfig, RoomInterrupt
from npc_server.protocol.codes import ErrorCode
from npc_server.protocol.frames import (
    Ack,
    Act,
    ClientFrame,
    Context,
    Error,
    Interrupt,
    Join,
    Leave,
    Members,
    Said,
    Say,
    Seen,
    ToolResult,
    Typing,
    TypingNotice,
)
from npc_server.session import Session
from npc_server.turns import Audience, Conversation, Refused, Started, Turn

TURN_RETRY_AFTER = 1.0


def handle_request(node: Node, session: Session, frame: ClientFrame) -> None:
    """Handle one validated client frame for `session`."""
    handler = _HANDLERS.get(type(frame))
    if handler is not None:
        _answering(node, session, lambda: handler(node, session, frame), frame)


def handle_forwarded(node: Node, caller: Caller, frame: ClientFrame, hops: int) -> None:
    """Handle a request another node routed here for a conversation this node runs."""
    if isinstance(frame, Say):
        _answering(node, caller, lambda: _forwarded_say(node, caller, frame, hops), frame)
    elif type(frame) in (Interrupt, Seen, Act, ToolResult):
        handler = _HANDLERS[type(frame)]
        _answering(node, caller, lambda: handler(node, caller, frame), frame)  # type: ignore[arg-type]


def _answering(node: Node, caller: Any, run: Callable[[], None], frame: ClientFrame) -> None:
    try:
        run()
    except Refused as exc:
        error = Error(code=exc.code, message=exc.message, id=frame.id, retry_after=exc.retry_after)
        node.hub.send_to_session(caller, error)


def _npc(node: Node, npc_id: str) -> NpcConfig:
    npc = node.npcs.get(npc_id)
    if npc is None:
        known = ", ".join(sorted(node.npcs)) or "none"
        raise Refused(ErrorCode.UNKNOWN_NPC, f"no NPC {npc_id!r}; known: {known}")
    return npc


def _member(node: Node, room: str, caller: Session | Caller) -> None:
    if not node.in_room(room, caller):
        raise Refused(ErrorCode.NOT_IN_ROOM, f"join room {room!r} first")


def _ack(node: Node, session: Session | Caller, frame: ClientFrame) -> None:
    if frame.id is not None:
        node.hub.send_to_session(session, Ack(frame.id))


def say(node: Node, session: Session, frame: Say) -> None:
    if node.draining:
        raise Refused(ErrorCode.BUSY, "the server is draining; reconnect and resume", 1.0)
    npc = _npc(node, frame.npc)
    if frame.room is not None:
        _member(node, frame.room, session)
        audience = Audience(room=frame.room)
    else:
        audience = Audience(player=session.player)
    if node.cluster is not None and node.find_conversation(npc.id, audience) is None:
        node.cluster.route_say(session, frame, npc, audience)  # to whichever node runs it
        return
    say_here(node, session, frame, npc, audience)


def _forwarded_say(node: Node, caller: Caller, frame: Say, hops: int) -> None:
    npc = _npc(node, frame.npc)
    audience = (
        Audience(room=frame.room) if frame.room is not None else Audience(player=caller.player)
    )
    if node.cluster is not None and node.find_conversation(npc.id, audience) is None:
        node.cluster.route_say(caller, frame, npc, audience, hops)  # it moved: claim again
        return
    say_here(node, caller, frame, npc, audience)


def say_here(
    node: Node, session: Session | Caller, frame: Say, npc: NpcConfig, audience: Audience
) -> None:
    """Submit a say to the conversation this node runs (making it), answering `session`."""
    player = session.player
    conversation = node.conversation(npc, audience)

    def accepted(started: Started) -> None:
        if isinstance(session, Caller):  # what the prompt needs from the player's node
            node.remember_caller(started.turn.id, session)
        ack = Ack(frame.id, turn=started.turn.id, queued=started.queued)
        node.hub.send_to_session(session, ack)
        if frame.room is not None:  # others hear the player before the NPC answers
            said = Said(frame.room, player, npc.id, frame.text)
            node.hub.send_to_room(frame.room, said, exclude=player)

    try:
        _fair_share(node, player, conversation)
        conversation.submit(player, frame.text, frame.id, accepted)
    except Refused:
        node.forget_if_unused(conversation)  # made for this say: given up with it
        raise


def say_claimed(
    node: Node, session: Session | Caller, frame: Say, npc: NpcConfig, audience: Audience
) -> None:
    """`say_here` once this node claimed the conversation (outside a request's handler)."""
    _answering(node, session, lambda: say_here(node, session, frame, npc, audience), frame)


def _fair_share(node: Node, player: str, conversation: Conversation) -> None:
    """Refuse a say past the player's share of turns or tokens (`busy`, `retry_after`)."""
    limits = node.config.limits
    active = conversation.active
    freed = active is not None and active.player == player and conversation.supersedes
    if node.turns.count_started_by(player) - freed >= limits.turns_per_player:
        node.events.emit(Limited("turns", player))
        raise Refused(
            ErrorCode.BUSY,
            f"you have {limits.turns_per_player} turns under way already",
            TURN_RETRY_AFTER,
        )
    wait = node.budget.retry_after(player) if node.budget is not None else None
    if wait is not None:
        node.events.emit(Limited("tokens", player))
        per_minute = limits.tokens_per_minute_player
        raise Refused(ErrorCode.BUSY, f"your budget of {per_minute} tokens a minute is spent", wait)


def _target_turn(
    node: Node, caller: Session | Caller, turn_id: str | None
) -> tuple[Conversation, Turn]:
    if turn_id is None:
        # A bare interrupt means the player's own newest turn, never another's.
        entry = node.turns.newest_started_by(caller.player)
        if entry is None:
            raise Refused(ErrorCode.UNKNOWN_TURN, "you have no active turn to interrupt")
        return entry
    entry = node.turns.get(turn_id)
    if entry is None or not node.sees(caller, entry[0].audience):
        raise Refused(ErrorCode.UNKNOWN_TURN, f"no active turn {turn_id!r}")
    return entry


def _elsewhere(node: Node, session: Session | Caller, frame: ClientFrame, entity: str) -> bool:
    """Route a request for another node's turn or action there; True if it went."""
    if node.cluster is None or isinstance(session, Caller):
        return False
    owner = node.cluster_owner_of(entity)
    if owner is None or owner == node.node_id:
        return False
    node.cluster.route_turn_request(session, frame, owner)
    return True


def _newest_relayed(node: Node, player: str) -> str | None:
    """A bare interrupt with no turn of the player's here: their newest on another node."""
    if node.turns.newest_started_by(player) is not None or node.cluster is None:
        return None
    relayed = node.cluster.remote.newest_started_by(player)
    return relayed.id if relayed is not None else None


def interrupt(node: Node, session: Session | Caller, frame: Interrupt) -> None:
    turn_id = frame.turn
    if turn_id is None and node.cluster is not None and not isinstance(session, Caller):
        turn_id = _newest_relayed(node, session.player)
        frame = Interrupt(frame.id, turn_id, frame.shown)
    if turn_id is not None and _elsewhere(node, session, frame, turn_id):
        return
    conversation, turn = _target_turn(node, session, turn_id)
    npc = conversation.npc
    if not npc.interruptible:
        raise Refused(ErrorCode.FORBIDDEN, f"{npc.id} cannot be interrupted")
    speaker_only = npc.room_interrupt is RoomInterrupt.SPEAKER
    if turn.room is not None and speaker_only and not turn.speaker_is(session.player):
        raise Refused(
            ErrorCode.FORBIDDEN, f"only {turn.player} may interrupt this turn of {npc.id}"
        )
    conversation.interrupt(turn, frame.shown)
    _ack(node, session, frame)


def seen(node: Node, session: Session | Caller, frame: Seen) -> None:
    if _elsewhere(node, session, frame, frame.turn):
        return
    entry = node.turns.get(frame.turn)
    if entry is not None and node.sees(session, entry[0].audience):
        turn = entry[1]
        turn.shown = frame.shown if turn.shown is None else max(turn.shown, frame.shown)
    _ack(node, session, frame)


def typing(node: Node, session: Session, frame: Typing) -> None:
    if frame.npc is not None:
        _npc(node, frame.npc)
    if frame.room is not None:
        _member(node, frame.room, session)
        notice = TypingNotice(session.player, frame.on, frame.room, frame.npc)
        node.hub.send_to_room(frame.room, notice, exclude=session.player)
    _ack(node, session, frame)


def context(node: Node, session: Session, frame: Context) -> None:
    npc = None if frame.npc is None else _npc(node, frame.npc).id
    size = len(msgpack.packb(frame.data))
    if not node.contexts.set_nowait(session.player, npc, frame.data, size):
        budget = node.contexts.max_bytes_per_player
        raise Refused(
            ErrorCode.TOO_LONG, f"your contexts would take over {budget} bytes; send less"
        )
    _ack(node, session, frame)


def act(node: Node, session: Session | Caller, frame: Act) -> None:
    if _elsewhere(node, session, frame, frame.action):
        return
    entry = node.turns.action(frame.action)
    if entry is None or not node.sees(session, entry[0].audience):
        raise Refused(ErrorCode.UNKNOWN_ACTION, f"no action {frame.action!r} waits for an answer")
    conversation, turn, action = entry
    if not action.approval:
        raise Refused(ErrorCode.FORBIDDEN, f"action {action.id} does not ask for approval")
    if turn.room is not None and not turn.speaker_is(session.player):
        raise Refused(ErrorCode.FORBIDDEN, f"only {turn.player} may answer this action")
    conversation.answer(turn, action, frame.accept, session.player)
    _ack(node, session, frame)


def join(node: Node, session: Session, frame: Join) -> None:
    limits = node.config.limits
    player = session.player
    if not node.hub.is_member(frame.room, player):
        if not node.broker.available:  # the room's other nodes cannot be reached
            raise Refused(ErrorCode.UNAVAILABLE, "rooms are unavailable; try again", 1.0)
        if len(node.hub.rooms_of(player)) >= limits.rooms_per_player:
            raise Refused(
                ErrorCode.FORBIDDEN, f"a player may be in at most {limits.rooms_per_player} rooms"
            )
        if node.hub.member_count(frame.room) >= limits.room_members:
            raise Refused(
                ErrorCode.FORBIDDEN, f"room {frame.room!r} is full ({limits.room_members} players)"
            )
        # Presence waits for the subscription: a member's answer to it must reach this
        # node, and other nodes hear that it listens (its broker's announcement) first.
        node.hub.join(frame.room, player, quiet=True)

        def joined() -> None:
            node.hub.announce(frame.room, player, "joined")
            # After the ack the player gets every frame of the room, from any node.
            _ack(node, session, frame)
            for mine in node.hub.sessions_of(player):  # catch up on turns under way
                node.snapshot(mine, room=frame.room)
            _send_members(node, session, frame.room)

        def failed() -> None:
            # Redis went away before the room's other nodes were heard: not joined.
            node.hub.leave(frame.room, player, quiet=True)
            error = Error(ErrorCode.UNAVAILABLE, "rooms are unavailable; try again", frame.id, 1.0)
            node.hub.send_to_session(session, error)

        node.broker.when_subscribed(joined, failed)
        return
    _ack(node, session, frame)
    _send_members(node, session, frame.room)


def _send_members(node: Node, session: Session, room: str) -> None:
    """`members` after a join's ack: who is in the room (in a cluster, once the other
    nodes answered: `cluster/rosters.py`)."""
    cluster = node.cluster
    if cluster is None:
        node.hub.send_to_session(session, Members(room, list(node.hub.members(room))))
        return

    async def send() -> None:
        others, partial = await roster(cluster, room, session.id)
        if not node.hub.is_member(room, session.player):
            return  # left meanwhile: its leave's ack came instead
        members = sorted(others | set(node.hub.members(room)))
        node.hub.send_to_session(session, Members(room, members, partial or None))

    cluster.spawn(send())


def leave(node: Node, session: Session, frame: Leave) -> None:
    if not node.hub.leave(frame.room, session.player):
        raise Refused(ErrorCode.NOT_IN_ROOM, f"not in room {frame.room!r}")
    _ack(node, session, frame)


def tool_result(node: Node, session: Session | Caller, frame: ToolResult) -> None:
    """The speaker's answer to a `tool` call the NPC asked its client (on any node)."""
    if _elsewhere(node, session, frame, frame.call):
        return
    if not node.tools.answer_nowait(session.player, frame.call, frame.result):
        raise Refused(ErrorCode.UNKNOWN_CALL, f"no tool call {frame.call!r} waits for your answer")
    _ack(node, session, frame)


_HANDLERS: dict[type, Callable[[Node, Session, ClientFrame], None]] = {
    Say: say,  # type: ignore[dict-item]
    Interrupt: interrupt,  # type: ignore[dict-item]
    Seen: seen,  # type: ignore[dict-item]
    Typing: typing,  # type: ignore[dict-item]
    Context: context,  # type: ignore[dict-item]
    Act: act,  # type: ignore[dict-item]
    Join: join,  # type: ignore[dict-item]
    Leave: leave,  # type: ignore[dict-item]
    ToolResult: tool_result,  # type: ignore[dict-item]
}
