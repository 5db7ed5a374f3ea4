"""The node's turn registry and context store: one owner, reached through methods."""

from __future__ import annotations

from npc_server.contexts import ContextStore
from npc_server.protocol.frames import Delta, TurnEnd
from npc_server.registry import TurnRegistry
from npc_server.turns import Audience, Conversation, Turn, TurnAction, TurnState


def _turn(turn_id: str, player: str, state: TurnState = TurnState.ACTIVE) -> Turn:
    return Turn(turn_id, "mira", player, "hi", None, 1, state=state)


class _Conversation:
    """Stands in for a Conversation: the registry only hands it back."""

    def __init__(self, player: str) -> None:
        self.audience = Audience(player=player)


def _conv(player: str) -> Conversation:
    return _Conversation(player)  # type: ignore[return-value]


def test_newest_started_by_is_the_players_own_newest_active_turn() -> None:
    """A bare interrupt's target: the newest active turn the player started, not others'."""
    registry = TurnRegistry(on_released=lambda c: None)
    mine_old, mine_new, queued = _turn("t1", "alice"), _turn("t2", "alice"), _turn("t4", "alice")
    queued.state = TurnState.QUEUED
    registry.turn_added(_conv("alice"), mine_old)
    registry.turn_added(_conv("alice"), mine_new)
    registry.turn_added(_conv("bob"), _turn("t3", "bob"))
    registry.turn_added(_conv("alice"), queued)
    found = registry.newest_started_by("alice")
    assert found is not None and found[1] is mine_new
    assert registry.newest_started_by("carol") is None
    assert registry.count_started_by("alice") == 3


def test_a_written_delta_moves_its_turns_written_end_forward_only() -> None:
    """`note_written` (a session's on_written): the furthest delta end; other frames change nothing."""
    registry = TurnRegistry(on_released=lambda c: None)
    turn = _turn("t1", "alice")
    registry.turn_added(_conv("alice"), turn)
    registry.note_written(Delta("t1", "One two ", 0))
    assert turn.written == 8
    registry.note_written(Delta("t1", "One", 0))  # another socket, further behind
    registry.note_written(TurnEnd("t1", "done", 8, 8))
    registry.note_written(Delta("t9", "elsewhere", 100))  # a turn not held here
    assert turn.written == 8
    registry.note_written(Delta("t1", "three", 8))
    assert turn.written == 13


def test_ending_a_turn_updates_every_index_and_releases_its_conversation() -> None:
    """turn_ended removes the turn from the id and player indexes and reports the release."""
    released: list[Conversation] = []
    registry = TurnRegistry(on_released=released.append)
    conversation, turn = _conv("alice"), _turn("t1", "alice")
    registry.turn_added(conversation, turn)
    registry.turn_ended(turn)
    registry.turn_ended(turn)  # a second report changes nothing
    assert registry.get("t1") is None and registry.count_started_by("alice") == 0
    assert registry.turn_count == 0 and released == [conversation]


def test_actions_are_found_by_id_until_resolved() -> None:
    """An open action is reachable by id; resolving it removes it and releases."""
    released: list[Conversation] = []
    registry = TurnRegistry(on_released=released.append)
    conversation, turn = _conv("alice"), _turn("t1", "alice")
    action = TurnAction("a1", "open_shop", {}, 0, True, 30.0)
    registry.action_opened(conversation, turn, action)
    assert registry.action("a1") == (conversation, turn, action)
    registry.action_resolved(action)
    assert registry.action("a1") is None and registry.action_count == 0
    assert released == [conversation]


def test_context_store_merges_scopes_and_bounds_bytes_per_player() -> None:
    """An NPC sees the all-NPC map under its own; a player's total stays within budget."""
    store = ContextStore(max_bytes_per_player=100)
    assert store.set_nowait("alice", None, {"where": "market", "gold": 3}, 40)
    assert store.set_nowait("alice", "mira", {"gold": 10}, 50)
    assert store.for_npc("alice", "mira") == {"where": "market", "gold": 10}
    assert store.for_npc("alice", "guard") == {"where": "market", "gold": 3}
    assert not store.set_nowait("alice", "guard", {"x": 1}, 11)  # 40 + 50 + 11 > 100
    assert store.set_nowait("alice", "mira", {"gold": 1}, 60)  # replacing frees its old size
    assert store.bytes_of("alice") == 100
    store.forget("alice")
    assert store.for_npc("alice", "mira") == {} and len(store) == 0


class _Answering(_Conversation):
    """A Conversation stand-in that records the actions it is told to expire."""

    def __init__(self, player: str) -> None:
        super().__init__(player)
        self.expired: list[str] = []

    def expire(self, turn: Turn, action: TurnAction) -> None:
        self.expired.append(action.id)


def test_a_stop_expires_only_the_actions_waiting_for_an_answer_after_their_turn() -> None:
    """expire_waiting_nowait (the node stops): approval actions of ended turns end
    `expired`; those of a turn still generating wait for its end, which settles them."""
    registry = TurnRegistry(on_released=lambda c: None)
    answering = _Answering("alice")
    conversation: Conversation = answering  # type: ignore[assignment]
    ended, streaming = _turn("t1", "alice", TurnState.ENDED), _turn("t2", "alice")
    registry.action_opened(conversation, ended, TurnAction("a1", "open_shop", {}, 0, True, 30))
    registry.action_opened(conversation, streaming, TurnAction("a2", "open_shop", {}, 0, True, 30))
    registry.action_opened(conversation, streaming, TurnAction("a3", "gift", {}, 0, False, 30))
    assert registry.expire_waiting_nowait() == 1
    assert answering.expired == ["a1"]
