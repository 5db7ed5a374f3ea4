"""What other nodes answer to the game server's API, checked before it is merged.

A node's answer is validated as a client's input is: a result that does not fit
(wrong types, names too long, a session state no node has) is dropped and its
node counts as missing (`Gathered.missing`), so a bad node makes an answer
`partial`, never wrong and never a crash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from npc_server.api_schema import MAX_NAME_CHARS  # as a request's names are checked
from npc_server.cluster.scatter import Gathered
from npc_server.session import SessionState

T = TypeVar("T")
_STATES = frozenset(s.value for s in SessionState)
MAX_KICKED = 10_000  # session ids one node's kick answer may name


def valid(gathered: Gathered, parse: Callable[[dict[str, Any]], T | None]) -> list[tuple[str, T]]:
    """Each node's result that `parse` accepts, by node; the others join `missing`."""
    parsed = []
    for origin, result in sorted(gathered.results.items()):
        value = parse(result)
        if value is None:
            gathered.missing.append(origin)
        else:
            parsed.append((origin, value))
    return parsed


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def kick_counts(result: dict[str, Any]) -> dict[str, Any] | None:
    """`{sessions, sockets, ids?}` of a kick (`ids`: None from a node of an earlier
    release, which sends the count alone)."""
    sessions, sockets, ids = result.get("sessions"), result.get("sockets"), result.get("ids")
    if not (_count(sessions) and _count(sockets)):
        return None
    if ids is not None and (_names(ids) is None or len(ids) > MAX_KICKED):
        return None
    return {"sessions": sessions, "sockets": sockets, "ids": ids}


def merged_sessions(counts: list[dict[str, Any]], parked: Iterable[str] = ()) -> int:
    """The sessions a kick ended over the cluster, with the `parked` ones it dropped from
    Redis: each id once (a session on its way from one node to another is counted by
    both, and so is one a node was parking or unparking as the kick came), plus the
    counts that came without."""
    ids: set[str] = set(parked)
    alone = 0
    for count in counts:
        if count.get("ids") is None:
            alone += count["sessions"]
        else:
            ids.update(count["ids"])
    return len(ids) + alone


def say_result(result: dict[str, Any]) -> dict[str, Any] | None:
    """The `{turn, queued}` of a game say the conversation's node ran."""
    turn, queued = result.get("turn"), result.get("queued")
    if not (_name(turn) and "queued" in result and (queued is None or _count(queued))):
        return None
    return {"turn": turn, "queued": queued}


def interrupt_result(result: dict[str, Any]) -> dict[str, Any] | None:
    """The `{turn, interrupted, kept}` of a game interrupt the turn's node ran."""
    turn, interrupted, kept = result.get("turn"), result.get("interrupted"), result.get("kept")
    if not (_name(turn) and isinstance(interrupted, bool) and (kept is None or _count(kept))):
        return None
    return {"turn": turn, "interrupted": interrupted, "kept": kept}


def _name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS


def _names(value: Any) -> list[str] | None:
    ok = isinstance(value, list) and all(
        isinstance(v, str) and len(v) <= MAX_NAME_CHARS for v in value
    )
    return value if ok else None


def member_list(result: dict[str, Any]) -> list[str] | None:
    """A room listing's `members`."""
    return _names(result.get("members"))


def player_part(result: dict[str, Any]) -> dict[str, Any] | None:
    """A player listing's `sessions`, `rooms` and `online`, each session checked."""
    sessions, rooms, online = (
        result.get("sessions"),
        _names(result.get("rooms")),
        result.get("online"),
    )
    if not isinstance(sessions, list) or rooms is None or not isinstance(online, bool):
        return None
    checked = [_session_entry(s) for s in sessions]
    if any(s is None for s in checked):
        return None
    return {"sessions": checked, "rooms": rooms, "online": online}


def _session_entry(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    session, state, seq = value.get("session"), value.get("state"), value.get("last_seq")
    if not (isinstance(session, str) and len(session) <= MAX_NAME_CHARS and _count(seq)):
        return None
    if not (isinstance(state, str) and state in _STATES):
        return None
    return {"session": session, "state": state, "last_seq": seq}
