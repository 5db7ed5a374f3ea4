"""Connection management over real sockets: rooms, several sockets, caps, resume, tokens."""

from __future__ import annotations

import asyncio

import pytest
import websockets

from npc_server.protocol.codes import CloseCode
from npc_server.session import Session, SessionState
from tests.support.client import Frame, RawClient, connect
from tests.support.server import conversation_of, running_server, server_config
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

SLOW_LONG = {"tokens_per_second": 300, "long_reply_chars": 3000}


def joined_text(frames: list[Frame], turn: str) -> str:
    """The turn's text from deltas, checking each starts where the last ended."""
    text = ""
    for frame in frames:
        if frame["t"] == "delta" and frame["turn"] == turn:
            assert frame["at"] == len(text), f"delta at {frame['at']} after {len(text)} chars"
            text += frame["text"]
    return text


async def test_a_joiner_gets_the_rooms_members_after_the_ack() -> None:
    """`members` follows the join's ack, the joiner included; the members already there
    get `presence{joined}` instead; a repeated join gets it again; a leaver's roster
    after the leave no longer has them."""
    async with running_server() as server, connect(server.url) as alice, connect(server.url) as bob:
        await alice.hello(server.token("alice"))
        await bob.hello(server.token("bob"))
        await alice.send({"t": "join", "id": 1, "room": "inn"})
        frames = await alice.recv_until(lambda f: f["t"] == "members")
        assert [f["t"] for f in frames] == ["ack", "members"]
        assert (frames[-1]["room"], frames[-1]["members"]) == ("inn", ["alice"])
        await bob.send({"t": "join", "id": 2, "room": "inn"})
        roster = await bob.expect("members")
        assert roster["members"] == ["alice", "bob"] and "partial" not in roster
        assert (await alice.expect("presence"))["player"] == "bob"
        await bob.send({"t": "leave", "id": 3, "room": "inn"})
        await bob.expect("ack")
        await alice.expect("presence")
        await alice.send({"t": "join", "id": 4, "room": "inn"})  # already a member
        assert (await alice.expect("members"))["members"] == ["alice"]


async def test_room_members_see_said_typing_presence_and_the_turn() -> None:
    """Two players in a room see each other's words, typing, presence, and the NPC's turn."""
    async with running_server() as server, connect(server.url) as alice, connect(server.url) as bob:
        await alice.hello(server.token("alice"))
        await bob.hello(server.token("bob"))
        await alice.send({"t": "join", "id": 1, "room": "inn"})
        await alice.expect("ack")
        await bob.send({"t": "join", "id": 1, "room": "inn"})
        await bob.expect("ack")
        presence = await alice.expect("presence")
        assert (presence["room"], presence["player"], presence["state"]) == ("inn", "bob", "joined")
        await bob.send({"t": "typing", "on": True, "room": "inn"})
        typing = await alice.expect("typing")
        assert (typing["player"], typing["on"], typing["room"]) == ("bob", True, "inn")
        await alice.send(
            {
                "t": "say",
                "id": 2,
                "npc": "questgiver",
                "text": "tell me about the quest",
                "room": "inn",
            }
        )
        ack = await alice.expect("ack")
        said = await bob.expect("said")
        assert (said["player"], said["npc"], said["text"]) == (
            "alice",
            "questgiver",
            "tell me about the quest",
        )
        frames = {}
        for name, client in (("alice", alice), ("bob", bob)):
            frames[name] = await client.recv_until(
                lambda f: f["t"] == "turn.end" and f["turn"] == ack["turn"]
            )
            start = next(f for f in frames[name] if f["t"] == "turn.start")
            assert (start["room"], start["player"]) == ("inn", "alice")
        assert (
            joined_text(frames["alice"], ack["turn"])
            == joined_text(frames["bob"], ack["turn"])
            != ""
        )
        await bob.send({"t": "leave", "id": 3, "room": "inn"})
        left = await alice.expect("presence")
        assert (left["player"], left["state"]) == ("bob", "left")


async def test_room_interrupt_rights_follow_the_npc() -> None:
    """Only the speaker may cut a merchant's room turn; anyone may cut the quest giver's."""
    async with running_server(server_config(scripted=SLOW_LONG)) as server:
        async with connect(server.url) as alice, connect(server.url) as bob:
            for client, name in ((alice, "alice"), (bob, "bob")):
                await client.hello(server.token(name))
                await client.send({"t": "join", "id": 1, "room": "hall"})
                await client.expect("ack")
            await alice.send(
                {"t": "say", "id": 2, "npc": "merchant", "text": "what wares", "room": "hall"}
            )
            turn = (await alice.expect("ack"))["turn"]
            await bob.expect("turn.start")
            await bob.send({"t": "interrupt", "id": 9, "turn": turn})
            error = await bob.expect("error")
            assert (error["code"], error["id"]) == ("forbidden", 9)
            await alice.send({"t": "interrupt", "turn": turn})
            assert (await alice.expect("turn.end"))["reason"] == "interrupted"
            await alice.send(
                {"t": "say", "id": 3, "npc": "questgiver", "text": "the quest?", "room": "hall"}
            )
            turn2 = (await alice.expect("ack"))["turn"]
            await bob.recv_until(lambda f: f["t"] == "turn.start" and f["turn"] == turn2)
            await bob.send({"t": "interrupt", "id": 10, "turn": turn2})
            end = await bob.expect("turn.end")
            assert (end["turn"], end["reason"]) == (turn2, "interrupted")


async def test_saying_in_a_room_needs_membership() -> None:
    """say, typing and leave for a room the player is not in get not_in_room."""
    async with running_server() as server, connect(server.url) as alice:
        await alice.hello(server.token("alice"))
        await alice.send({"t": "say", "id": 1, "npc": "merchant", "text": "hi", "room": "x"})
        assert (await alice.expect("error"))["code"] == "not_in_room"


async def test_room_limits_are_clear_errors() -> None:
    """A full room and too many rooms per player are refused with a reason."""
    config = server_config(limits={"room_members": 1, "rooms_per_player": 1})
    async with (
        running_server(config) as server,
        connect(server.url) as alice,
        connect(server.url) as bob,
    ):
        await alice.hello(server.token("alice"))
        await bob.hello(server.token("bob"))
        await alice.send({"t": "join", "id": 1, "room": "a"})
        await alice.expect("ack")
        await alice.send({"t": "join", "id": 2, "room": "b"})
        assert "at most 1 rooms" in (await alice.expect("error"))["message"]
        await bob.send({"t": "join", "id": 1, "room": "a"})
        assert "full" in (await bob.expect("error"))["message"]


async def test_a_player_with_two_sockets_gets_the_stream_on_both() -> None:
    """Frames of a player's conversation reach every socket of that player."""
    async with running_server() as server, connect(server.url) as phone, connect(server.url) as pc:
        await phone.hello(server.token("alice"))
        await pc.hello(server.token("alice"))
        await phone.send({"t": "say", "id": 1, "npc": "guard", "text": "open the gate"})
        turn = (await phone.expect("ack"))["turn"]
        texts = []
        for client in (phone, pc):
            frames = await client.recv_until(lambda f: f["t"] == "turn.end" and f["turn"] == turn)
            texts.append(joined_text(frames, turn))
        assert texts[0] == texts[1] != ""


async def test_socket_cap_refuses_the_newest_with_4513() -> None:
    """Past max_sockets_per_player the newest socket is closed with 4513."""
    async with running_server(server_config(limits={"max_sockets_per_player": 2})) as server:
        async with (
            connect(server.url) as one,
            connect(server.url) as two,
            connect(server.url) as three,
        ):
            await one.hello(server.token("alice"))
            await two.hello(server.token("alice"))
            await three.send({"t": "hello", "token": server.token("alice")})
            assert await three.close_code() == CloseCode.TOO_MANY_CONNECTIONS
            await one.send({"t": "ping", "id": 1})
            assert (await one.expect("pong"))["id"] == 1


async def test_a_resume_that_takes_over_a_session_at_the_cap_is_welcomed() -> None:
    """At the cap (2), a third socket that resumes the first one's session adds no socket:
    it is welcomed with the replay and the first socket gets 4503 (it is not refused with
    4513, which would tell the client to give up). A fresh hello at the cap is still
    refused, and leaves no session behind."""
    async with running_server(server_config(limits={"max_sockets_per_player": 2})) as server:
        async with (
            connect(server.url) as one,
            connect(server.url) as two,
            connect(server.url) as three,
            connect(server.url) as four,
        ):
            await one.hello(server.token("alice"))
            await two.hello(server.token("alice"))
            resume = {"session": one.session, "seq": one.last_seq}
            welcome = await three.hello(server.token("alice"), resume=resume)
            assert welcome["resumed"] is True and welcome["session"] == one.session
            assert await one.close_code() == CloseCode.REPLACED
            await four.send({"t": "hello", "token": server.token("alice")})
            assert await four.close_code() == CloseCode.TOO_MANY_CONNECTIONS
            assert len(server.node.hub.sessions_of("alice")) == 2
            for client in (two, three):
                await client.send({"t": "ping", "id": 1})
                assert (await client.expect("pong"))["id"] == 1


async def test_socket_cap_can_replace_the_oldest_with_4503() -> None:
    """With sockets_policy=replace the oldest socket is closed with 4503."""
    limits = {"max_sockets_per_player": 1, "sockets_policy": "replace"}
    async with running_server(server_config(limits=limits)) as server:
        async with connect(server.url) as old, connect(server.url) as new:
            await old.hello(server.token("alice"))
            await new.hello(server.token("alice"))
            assert await old.close_code() == CloseCode.REPLACED
            assert "replaced" in (old.ws.close_reason or "")
            await new.send({"t": "ping", "id": 1})
            assert (await new.expect("pong"))["id"] == 1


async def drop(client: RawClient) -> None:
    """Cut the connection without a close handshake, like a lost network."""
    client.ws.transport.abort()
    await asyncio.wait_for(client.ws.wait_closed(), 5)


async def test_resume_mid_turn_gets_every_missed_delta_once_in_order() -> None:
    """A drop mid-turn and a resume deliver the whole turn exactly once, in order."""
    async with running_server(server_config(scripted=SLOW_LONG)) as server:
        async with connect(server.url) as first:
            await first.hello(server.token("alice"))
            await first.send({"t": "say", "id": 1, "npc": "merchant", "text": "tell me a rumour"})
            turn = (await first.expect("ack"))["turn"]
            await first.recv_until(lambda f: f["t"] == "delta" and f["at"] > 200)
            before = first.received[1:]  # all after welcome
            session_id, seq = first.session, first.last_seq
            await drop(first)
        [session] = server.node.hub.sessions_of("alice")
        await wait_until(lambda: session.state is SessionState.DETACHED, what="session detached")
        async with connect(server.url) as second:
            welcome = await second.hello(
                server.token("alice"), resume={"session": session_id, "seq": seq}
            )
            assert welcome["resumed"] is True
            assert welcome["session"] == session_id
            after = await second.recv_until(lambda f: f["t"] == "turn.end" and f["turn"] == turn)
            memory = conversation_of(server, "merchant", "alice").memory.lines()
        seqs = [f["seq"] for f in before + after if "seq" in f]
        assert seqs == list(range(1, len(seqs) + 1)), "every frame exactly once, in order"
        text = joined_text(before + after, turn)
        end = after[-1]
        assert end["reason"] == "done" and len(text) == end["chars"] >= 3000
        assert memory[-1].text == text


async def test_resume_after_the_window_gets_a_snapshot() -> None:
    """Outside the resume window: a new session, then turn.start and one delta at 0."""
    config = server_config(
        scripted={"tokens_per_second": 100, "long_reply_chars": 3000},
        limits={"resume_window": 0.05},
    )
    async with running_server(config) as server:
        async with connect(server.url) as first:
            await first.hello(server.token("alice"))
            await first.send({"t": "say", "id": 1, "npc": "merchant", "text": "tell me a rumour"})
            turn = (await first.expect("ack"))["turn"]
            await first.recv_until(lambda f: f["t"] == "delta" and f["at"] > 20)
            old_session, seq = first.session, first.last_seq
            await drop(first)
        [session] = server.node.hub.sessions_of("alice")
        await wait_until(lambda: session.expired_at(server.node.clock()), what="resume window over")
        async with connect(server.url) as second:
            welcome = await second.hello(
                server.token("alice"), resume={"session": old_session, "seq": seq}
            )
            assert welcome["resumed"] is False
            assert welcome["session"] != old_session
            start = await second.recv()
            snapshot = await second.recv()
            assert (start["t"], start["turn"]) == ("turn.start", turn)
            assert (snapshot["t"], snapshot["turn"], snapshot["at"]) == ("delta", turn, 0)
            rest = await second.recv_until(lambda f: f["t"] == "turn.end")
            assert len(joined_text([snapshot, *rest], turn)) == rest[-1]["chars"]


async def test_resume_is_only_for_the_same_player() -> None:
    """Another player's token cannot take over a session: it gets a new one."""
    async with running_server() as server:
        async with connect(server.url) as alice:
            await alice.hello(server.token("alice"))
            await alice.send({"t": "say", "id": 1, "npc": "guard", "text": "hello"})
            await alice.expect("turn.end")
            stolen = {"session": alice.session, "seq": 0}
            async with connect(server.url) as mallory:
                welcome = await mallory.hello(server.token("mallory"), resume=stolen)
                assert welcome["resumed"] is False
                assert welcome["player"] == "mallory"
                assert welcome["session"] != alice.session
            await alice.send({"t": "ping", "id": 5})
            assert (await alice.expect("pong"))["id"] == 5


async def test_refresh_replaces_the_token_and_expiry_closes_4002() -> None:
    """A refreshed socket outlives its first token; an unrefreshed one is closed with 4002."""
    config = server_config(auth={"expiry_grace": 0.0})
    async with (
        running_server(config) as server,
        connect(server.url) as kept,
        connect(server.url) as lapsed,
    ):
        await kept.hello(server.token("alice", ttl=1.5))
        await lapsed.hello(server.token("alice", ttl=1.5))
        await kept.send({"t": "refresh", "id": 1, "token": server.token("bob")})
        assert (await kept.expect("error"))["code"] == "forbidden"
        await kept.send({"t": "refresh", "id": 2, "token": "garbage"})
        assert (await kept.expect("error"))["code"] == "bad_token"
        await kept.send({"t": "refresh", "id": 3, "token": server.token("alice", ttl=3600)})
        assert (await kept.expect("ack"))["id"] == 3
        assert await lapsed.close_code() == CloseCode.TOKEN_EXPIRED
        await kept.send({"t": "ping", "id": 4})
        assert (await kept.expect("pong"))["id"] == 4


async def test_connect_rate_limit_per_player_closes_4029() -> None:
    """Connecting faster than the per-player rate closes with 4029."""
    limits = {"connects_per_s_player": 0.01, "connects_burst_player": 3}
    async with running_server(server_config(limits=limits)) as server:
        for _ in range(3):
            async with connect(server.url) as client:
                await client.hello(server.token("alice"))
        async with connect(server.url) as client:
            await client.send({"t": "hello", "token": server.token("alice")})
            assert await client.close_code() == CloseCode.RATE_LIMITED
        async with connect(server.url) as other:
            await other.hello(server.token("bob"))


async def test_connect_rate_limit_per_address_closes_4029() -> None:
    """Connecting faster than the per-address rate closes with 4029 before hello."""
    limits = {"connects_per_s_address": 0.01, "connects_burst_address": 2}
    async with running_server(server_config(limits=limits)) as server:
        for name in ("a", "b"):
            async with connect(server.url) as client:
                await client.hello(server.token(name))
        async with connect(server.url) as client:
            assert await client.close_code() == CloseCode.RATE_LIMITED


async def test_churn_leaves_nothing_behind() -> None:
    """Thousands of connects, joins, says and disconnects of every kind leave zero state."""
    limits = {
        "connects_per_s_address": 1e6,
        "connects_burst_address": 10**6,
        "connects_per_s_player": 1e6,
        "connects_burst_player": 10**6,
        "resume_window": 0.0,
        "room_members": 1000,
    }
    async with running_server(server_config(limits=limits)) as server:
        async with connect(server.url) as warmup:  # the server's own tasks are running now
            await warmup.hello(server.token("warmup"))
        baseline_tasks = len(asyncio.all_tasks())

        async def visit(i: int) -> None:
            async with connect(server.url) as client:
                await client.hello(server.token(f"p{i % 300}"))
                await client.send({"t": "join", "id": 1, "room": f"room{i % 7}"})
                await client.expect("ack")
                if i % 5 == 0:
                    await client.send({"t": "say", "id": 2, "npc": "guard", "text": "hello"})
                    await client.expect("ack")
                if i % 3 == 0:
                    client.ws.transport.abort()  # no close handshake

        for batch in range(0, 2000, 100):
            results = await asyncio.gather(
                *(visit(i) for i in range(batch, batch + 100)), return_exceptions=True
            )
            unexpected = [
                r
                for r in results
                if isinstance(r, Exception) and not isinstance(r, websockets.ConnectionClosed)
            ]
            assert not unexpected, unexpected[:3]
        node = server.node
        await wait_until(lambda: not node.sockets, what="all sockets closed")
        await wait_until(lambda: node.limiter.active == 0, what="all turns finished")
        node.expire_sessions()
        stats = node.statistics()
        assert (stats.sessions, stats.players, stats.rooms, stats.memberships) == (0, 0, 0, 0)
        assert (stats.conversations, stats.turns, stats.open_actions, stats.generations) == (
            0,
            0,
            0,
            0,
        )
        await wait_until(
            lambda: len(asyncio.all_tasks()) <= baseline_tasks, what="tasks back to baseline"
        )


async def test_new_session_snapshot_includes_actions_awaiting_approval() -> None:
    """After the resume window, the new session still gets the open approval and can answer it."""
    config = server_config(limits={"resume_window": 0.05})
    async with running_server(config) as server:
        async with connect(server.url) as first:
            await first.hello(server.token("alice"))
            await first.send(
                {"t": "say", "id": 1, "npc": "merchant", "text": "what wares do you sell?"}
            )
            action = await first.expect("action")
            assert action["approval"] is True
            await first.expect("turn.end")
            old = {"session": first.session, "seq": first.last_seq}
            await drop(first)
        [session] = server.node.hub.sessions_of("alice")
        await wait_until(lambda: session.expired_at(server.node.clock()), what="resume window over")
        async with connect(server.url) as second:
            welcome = await second.hello(server.token("alice"), resume=old)
            assert welcome["resumed"] is False
            again = await second.expect("action")
            assert (again["action"], again["name"], again["at"]) == (
                action["action"],
                "open_shop",
                action["at"],
            )
            await second.send({"t": "act", "id": 2, "action": again["action"], "accept": True})
            ended = await second.expect("action.end")
            assert (ended["action"], ended["status"]) == (action["action"], "accepted")


async def test_a_plain_new_session_starts_with_an_approval_an_ended_one_left_open() -> None:
    """Alice's socket closes with 1000 (her session ends) while the merchant's shop
    waits for her answer; her next hello, without resume, gets that `action` first
    (protocol.md, lifecycle step 3) and can still accept it."""
    async with running_server() as server:
        async with connect(server.url) as first:
            await first.hello(server.token("alice"))
            await first.send({"t": "say", "id": 1, "npc": "merchant", "text": "your wares?"})
            action = await first.expect("action")
            assert action["approval"] is True
            await first.expect("turn.end")
            await first.ws.close(1000)
        await wait_until(lambda: not server.node.hub.sessions_of("alice"), what="ended")
        async with connect(server.url) as second:
            welcome = await second.hello(server.token("alice"))
            assert welcome["resumed"] is False and welcome["session"] != first.session
            again = await second.recv()
            assert again["t"] == "action" and again["action"] == action["action"]
            await second.send({"t": "act", "id": 2, "action": again["action"], "accept": True})
            ended = await second.expect("action.end")
            assert (ended["action"], ended["status"]) == (action["action"], "accepted")


async def test_joining_a_room_mid_turn_catches_up() -> None:
    """A player who joins while a room turn streams gets it from the start, then live."""
    async with running_server(server_config(scripted=SLOW_LONG)) as server:
        async with connect(server.url) as alice, connect(server.url) as bob:
            await alice.hello(server.token("alice"))
            await bob.hello(server.token("bob"))
            await alice.send({"t": "join", "id": 1, "room": "inn"})
            await alice.expect("ack")
            await alice.send(
                {"t": "say", "id": 2, "npc": "questgiver", "text": "the quest?", "room": "inn"}
            )
            turn = (await alice.expect("ack"))["turn"]
            await alice.recv_until(lambda f: f["t"] == "delta" and f["at"] > 100)
            await bob.send({"t": "join", "id": 1, "room": "inn"})
            frames = await bob.recv_until(lambda f: f["t"] == "turn.end" and f["turn"] == turn)
            start = next(f for f in frames if f["t"] == "turn.start")
            assert start["turn"] == turn
            text = joined_text(frames, turn)
            assert len(text) == frames[-1]["chars"]


async def test_a_clean_close_ends_the_session_and_a_drop_keeps_it() -> None:
    """Close 1000 means the player left (session gone, presence left); a drop stays resumable."""
    async with running_server() as server, connect(server.url) as watcher:
        await watcher.hello(server.token("watcher"))
        await watcher.send({"t": "join", "id": 1, "room": "inn"})
        await watcher.expect("ack")
        async with connect(server.url) as leaver:
            await leaver.hello(server.token("leaver"))
            await leaver.send({"t": "join", "id": 1, "room": "inn"})
            await leaver.expect("ack")
            await leaver.ws.close(code=1000)
        frames = await watcher.recv_until(lambda f: f["t"] == "presence" and f["state"] == "left")
        assert frames[-1]["player"] == "leaver"
        assert server.node.hub.sessions_of("leaver") == []
        async with connect(server.url) as dropper:
            await dropper.hello(server.token("dropper"))
            await drop(dropper)
        [session] = server.node.hub.sessions_of("dropper")
        await wait_until(
            lambda: session.state is SessionState.DETACHED, what="dropped session detached"
        )


async def test_a_dropped_player_leaves_the_room_as_the_window_ends_not_at_a_sweep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Members saw a dropped player for up to the sweep's 5 s past `resume_window` (a
    client author measured 8.4 s with a 6 s window). With the sweep out of reach, the
    session still ends, and `presence{left}` comes, when its window does."""
    from npc_server import app

    monkeypatch.setattr(app, "SWEEP_INTERVAL", 3600.0)
    async with running_server(server_config(limits={"resume_window": 0.2})) as server:
        async with connect(server.url) as alice, connect(server.url) as bob:
            for client, name in ((alice, "alice"), (bob, "bob")):
                await client.hello(server.token(name))
                await client.send({"t": "join", "id": 1, "room": "inn"})
                await client.expect("ack")
            await alice.recv_until(lambda f: f["t"] == "presence" and f["player"] == "bob")
            [session] = server.node.hub.sessions_of("bob")
            await drop(bob)
            left = await alice.recv_until(
                lambda f: f["t"] == "presence" and f["state"] == "left", timeout=3
            )
            assert left[-1]["player"] == "bob"
            assert session.state is SessionState.EXPIRED
            assert not server.node.hub.sessions_of("bob")


async def test_a_resumed_session_is_not_ended_by_its_old_windows_timer() -> None:
    """The timer of an earlier detach fires while the session is attached again: it stays."""
    async with running_server(server_config(limits={"resume_window": 1.0})) as server:
        node = server.node
        fired: list[Session] = []
        check = node._expire_if_due

        def recorded(session: Session) -> None:
            fired.append(session)
            check(session)

        node._expire_if_due = recorded  # type: ignore[method-assign]
        async with connect(server.url) as first:
            await first.hello(server.token("alice"))
            old = {"session": first.session, "seq": first.last_seq}
            await drop(first)
        async with connect(server.url) as second:
            welcome = await second.hello(server.token("alice"), resume=old)
            assert welcome["resumed"] is True
            [session] = node.hub.sessions_of("alice")
            await wait_until(lambda: session in fired, what="the first detach's timer")
            assert session.state is SessionState.ATTACHED
            await second.send({"t": "ping", "id": "p"})
            assert (await second.expect("pong"))["id"] == "p"


async def test_a_session_ended_another_way_leaves_no_timer_holding_it() -> None:
    """A detached session ended before its window (here a resume it could not serve) has
    its timer cancelled: the timer held the session and its replay for the whole window."""
    async with running_server(server_config(limits={"resume_window": 60})) as server:
        node = server.node
        async with connect(server.url) as first:
            await first.hello(server.token("alice"))
            old = str(first.session)
            await drop(first)
        await wait_until(lambda: old in node._expiries, what="the window's timer")
        async with connect(server.url) as second:
            welcome = await second.hello(
                server.token("alice"), resume={"session": old, "seq": 99}
            )  # a seq never sent: a new session, and the old one ends
            assert welcome["resumed"] is False
            assert old not in node._expiries
            assert not node.hub.get(old)


async def test_a_resume_under_way_restarts_the_window_so_its_end_cannot_cut_it() -> None:
    """In a cluster a resuming hello awaits Redis (the socket claim, subscriptions) after
    finding its session: the window's end, now exact, must not end the session meanwhile.
    Holding it for the resume restarts its window and re-arms its timer."""
    async with running_server(server_config(limits={"resume_window": 60})) as server:
        node = server.node
        async with connect(server.url) as first:
            await first.hello(server.token("alice"))
            await drop(first)
        [session] = node.hub.sessions_of("alice")
        await wait_until(lambda: session.state is SessionState.DETACHED, what="detached")
        session.detached_at = node.clock() - 59.9  # its window nearly over
        armed = node._expiries[session.id]
        node.hold_for_resume(session)
        assert not session.expired_at(node.clock() + 1.0)  # a new window from now
        assert node._expiries[session.id] is not armed and armed.cancelled()
