"""RoomLog: the numbered, bounded log that watchers of a room read from (no I/O)."""

from __future__ import annotations

import pytest

from npc_server.brokers import MemoryBroker, room_channel
from npc_server.cli import main
from npc_server.config import ConfigError, load_config
from npc_server.protocol.frames import Delta, Presence, Said
from npc_server.roomlog import RoomLog, RoomLogs
from npc_server.tokens import TokenError, verify_token, verify_watch_token


class Reader:
    def __init__(self, cursor: int = 0) -> None:
        self.cursor = cursor
        self.woken = 0
        self.overruns = 0

    def wake_nowait(self) -> None:
        self.woken += 1

    def overrun(self) -> None:
        self.overruns += 1


def said(n: int) -> Said:
    return Said("hall", "alice", "merchant", f"line {n}")


def test_frames_are_numbered_encoded_once_and_read_after_a_cursor() -> None:
    """Each frame gets the next number; a reader gets exactly the events after its cursor."""
    log = RoomLog("hall", max_events=10, max_lag=5, epoch="e1")
    for n in range(1, 4):
        log.push_nowait(said(n))
    assert log.last_seq == 3
    data = log.read_after(1)
    assert data is not None
    assert data.count(b"\nevent: said\n") == 2 and data.startswith(b"id: e1-2\n")
    assert b'"text":"line 3"' in data and b"line 1" not in data
    assert log.read_after(3) == b""


def test_outside_the_window_there_is_no_replay() -> None:
    """Once events are gone, read_after and position_of say so instead of skipping them."""
    log = RoomLog("hall", max_events=3, max_lag=3, epoch="e1")
    for n in range(1, 7):
        log.push_nowait(said(n))
    assert log.read_after(2) is None
    assert log.position_of("e1-2") is None
    assert log.position_of("e1-3") == 3  # events 4, 5, 6 are all kept
    assert log.position_of("e2-5") is None  # another log's id
    assert log.position_of("e1-7") is None  # from the future
    assert log.position_of("garbage") is None


def test_a_reader_too_far_behind_is_told_and_others_are_woken() -> None:
    """Past max_lag events behind: overrun; within it: a wake-up per frame."""
    log = RoomLog("hall", max_events=100, max_lag=2, epoch="e1")
    slow, fast = Reader(), Reader()
    log.readers |= {slow, fast}
    for n in range(1, 5):
        log.push_nowait(Presence("hall", f"p{n}", "joined"))
        fast.cursor = log.last_seq
    assert slow.overruns == 2 and slow.woken == 2
    assert fast.overruns == 0 and fast.woken == 4


def test_deltas_are_never_dropped_from_the_log() -> None:
    """An interrupt's drop of queued deltas leaves the log whole: a replay must match."""
    log = RoomLog("hall", max_events=10, max_lag=5, epoch="e1")
    log.push_nowait(Delta("t-1", "Hello", 0))
    assert log.drop_turn_nowait("t-1") == 0
    assert b'"text":"Hello"' in (log.read_after(0) or b"")


def test_logs_subscribe_to_the_room_channel_and_are_forgotten_after_linger() -> None:
    """A log hears the room's publications; idle past linger, it unsubscribes."""
    now = [0.0]
    broker = MemoryBroker()
    logs = RoomLogs(broker, max_events=10, max_lag=5, linger=30.0, clock=lambda: now[0])
    log = logs.open("hall")
    reader = Reader()
    logs.add_reader(log, reader)
    broker.publish_nowait(room_channel("hall"), said(1), exclude="alice")
    assert log.last_seq == 1  # a log belongs to no player: `exclude` never skips it
    logs.remove_reader(log, reader)
    now[0] = 29.0
    assert logs.sweep_nowait() == 0
    now[0] = 31.0
    assert logs.sweep_nowait() == 1
    assert logs.get("hall") is None and broker.subscriber_count(room_channel("hall")) == 0


def test_public_rooms_are_checked_and_read_from_the_environment() -> None:
    """[watch] public_rooms: a list of room names; NPC_SERVER_WATCH_PUBLIC_ROOMS is a,b."""
    config = load_config(env={"NPC_SERVER_WATCH_PUBLIC_ROOMS": "lobby, arena"})
    assert config.watch.public_rooms == ("lobby", "arena")
    with pytest.raises(ConfigError, match=r"public_rooms\) must be a list of room names"):
        load_config(env={"NPC_SERVER_WATCH_PUBLIC_ROOMS": "bad room!"})
    with pytest.raises(ConfigError, match=r"keepalive\) must be greater than 0"):
        load_config(env={"NPC_SERVER_WATCH_KEEPALIVE": "0"})


def test_the_token_command_prints_a_watch_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`npc-server token --watch R --watch S` signs the rooms; it is no player token."""
    monkeypatch.setenv("NPC_SERVER_SECRET", "s" * 40)
    assert main(["token", "--watch", "hall", "--watch", "arena", "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip()
    claims = verify_watch_token("s" * 40, token)
    assert claims.rooms == {"hall", "arena"}
    with pytest.raises(TokenError, match="watch token"):
        verify_token("s" * 40, token)
    with pytest.raises(SystemExit):
        main(["token", "--watch", "bad room!"])
