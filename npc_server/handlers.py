"""Handlers of client requests after `hello`: one function per frame type.

Each handler answers through the requesting session (`ack`/`error`) and
reaches other players only through the hub. `Refused` becomes `error{id}`.
"""

from __future__ import annotations

from collections.abc import Callable

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
    Said,
    Say,
    Seen,
    Typing,
    TypingNotice,
)
from npc_server.session import Session
from npc_server.turns import Audience, Conversation, Refused, Started, Turn, TurnState

MAX_CONTEXT_KEYS = 64


def handle_request(node: Node, session: Session, frame: ClientFrame) -> None:
    """Handle one validated client frame for `session`."""
    handler = _HANDLERS.get(type(frame))
    if handler is None:
        return
    try:
        handler(node, session, frame)
    except Refused as exc:
        error = Error(code=exc.code, message=exc.message, id=frame.id, retry_after=exc.retry_after)
        session.push_nowait(error)


def _npc(node: Node, npc_id: str) -> NpcConfig:
    npc = node.npcs.get(npc_id)
    if npc is None:
        known = ", ".join(sorted(node.npcs)) or "none"
        raise Refused(ErrorCode.UNKNOWN_NPC, f"no NPC {npc_id!r}; known: {known}")
    return npc


def _member(node: Node, room: str, player: str) -> None:
    if not node.hub.is_member(room, player):
        raise Refused(ErrorCode.NOT_IN_ROOM, f"join room {room!r} first")


def _ack(session: Session, frame: ClientFrame) -> None:
    if frame.id is not None:
        session.push_nowait(Ack(frame.id))


def say(node: Node, session: Session, frame: Say) -> None:
    if node.draining:
        raise Refused(ErrorCode.BUSY, "the server is draining; reconnect and resume", 1.0)
    npc = _npc(node, frame.npc)
    player = session.player
    if frame.room is not None:
        _member(node, frame.room, player)
        audience = Audience(room=frame.room)
    else:
        audience = Audience(player=player)
    conversation = node.conversation(npc, audience)

    def accepted(started: Started) -> None:
        node.turns[started.turn.id] = (conversation, started.turn)
        session.push_nowait(Ack(frame.id, turn=started.turn.id, queued=started.queued))
        if frame.room is not None:  # others hear the player before the NPC answers
            said = Said(frame.room, player, npc.id, frame.text)
            node.hub.send_to_room(frame.room, said, exclude=player)

    conversation.submit(player, frame.text, frame.id, accepted)


def _target_turn(node: Node, player: str, turn_id: str | None) -> tuple[Conversation, Turn]:
    if turn_id is not None:
        entry = node.turns.get(turn_id)
        if entry is None or not _may_see(node, player, entry[0]):
            raise Refused(ErrorCode.UNKNOWN_TURN, f"no active turn {turn_id!r}")
        return entry
    for conversation, turn in reversed(list(node.turns.values())):
        if turn.state is TurnState.ACTIVE and _may_see(node, player, conversation):
            return conversation, turn
    raise Refused(ErrorCode.UNKNOWN_TURN, "there is no active turn to interrupt")


def _may_see(node: Node, player: str, conversation: Conversation) -> bool:
    audience = conversation.audience
    if audience.room is not None:
        return node.hub.is_member(audience.room, player)
    return audience.player == player


def interrupt(node: Node, session: Session, frame: Interrupt) -> None:
    conversation, turn = _target_turn(node, session.player, frame.turn)
    npc = conversation.npc
    if not npc.interruptible:
        raise Refused(ErrorCode.FORBIDDEN, f"{npc.id} cannot be interrupted")
    speaker_only = npc.room_interrupt is RoomInterrupt.SPEAKER
    if turn.room is not None and speaker_only and turn.player != session.player:
        raise Refused(
            ErrorCode.FORBIDDEN, f"only {turn.player} may interrupt this turn of {npc.id}"
        )
    conversation.interrupt(turn, frame.shown)
    _ack(session, frame)


def seen(node: Node, session: Session, frame: Seen) -> None:
    entry = node.turns.get(frame.turn)
    if entry is not None and _may_see(node, session.player, entry[0]):
        turn = entry[1]
        turn.shown = frame.shown if turn.shown is None else max(turn.shown, frame.shown)
    _ack(session, frame)


def typing(node: Node, session: Session, frame: Typing) -> None:
    if frame.room is not None:
        _member(node, frame.room, session.player)
        notice = TypingNotice(session.player, frame.on, frame.room, frame.npc)
        node.hub.send_to_room(frame.room, notice, exclude=session.player)
    _ack(session, frame)


def context(node: Node, session: Session, frame: Context) -> None:
    if len(frame.data) > MAX_CONTEXT_KEYS:
        raise Refused(ErrorCode.TOO_LONG, f"context.data has more than {MAX_CONTEXT_KEYS} keys")
    scope = "*" if frame.npc is None else _npc(node, frame.npc).id
    node.contexts.setdefault(session.player, {})[scope] = dict(frame.data)
    _ack(session, frame)


def act(node: Node, session: Session, frame: Act) -> None:
    entry = node.actions.get(frame.action)
    if entry is None or not _may_see(node, session.player, entry[0]):
        raise Refused(ErrorCode.UNKNOWN_ACTION, f"no action {frame.action!r} waits for an answer")
    conversation, turn, action = entry
    if not action.approval:
        raise Refused(ErrorCode.FORBIDDEN, f"action {action.id} does not ask for approval")
    if turn.room is not None and turn.player != session.player:
        raise Refused(ErrorCode.FORBIDDEN, f"only {turn.player} may answer this action")
    conversation.answer(turn, action, frame.accept)
    _ack(session, frame)


def join(node: Node, session: Session, frame: Join) -> None:
    limits = node.config.limits
    player = session.player
    if not node.hub.is_member(frame.room, player):
        if len(node.hub.rooms_of(player)) >= limits.rooms_per_player:
            raise Refused(
                ErrorCode.FORBIDDEN, f"a player may be in at most {limits.rooms_per_player} rooms"
            )
        if len(node.hub.members(frame.room)) >= limits.room_members:
            raise Refused(
                ErrorCode.FORBIDDEN, f"room {frame.room!r} is full ({limits.room_members} players)"
            )
        node.hub.join(frame.room, player)
        _ack(session, frame)
        for mine in node.hub.sessions_of(player):  # catch up on turns already under way
            node.snapshot(mine, room=frame.room)
        return
    _ack(session, frame)


def leave(node: Node, session: Session, frame: Leave) -> None:
    if not node.hub.leave(frame.room, session.player):
        raise Refused(ErrorCode.NOT_IN_ROOM, f"not in room {frame.room!r}")
    _ack(session, frame)


_HANDLERS: dict[type, Callable[[Node, Session, ClientFrame], None]] = {
    Say: say,  # type: ignore[dict-item]
    Interrupt: interrupt,  # type: ignore[dict-item]
    Seen: seen,  # type: ignore[dict-item]
    Typing: typing,  # type: ignore[dict-item]
    Context: context,  # type: ignore[dict-item]
    Act: act,  # type: ignore[dict-item]
    Join: join,  # type: ignore[dict-item]
    Leave: leave,  # type: ignore[dict-item]
}
