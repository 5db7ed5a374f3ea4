"""The Python client library (`npc_client`) against a real server in this loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from npc_client import (
    Action,
    BackendError,
    ConnectionClosedError,
    ConnectionState,
    Draining,
    Members,
    NotInRoom,
    NpcClient,
    Presence,
    Said,
    Text,
    TooLong,
    Turn,
    UnknownAction,
    UnknownNpc,
    connect,
)

from npc_server.app import drain
from npc_server.backends.base import GenerationError, GenerationRequest, Piece, TextPiece
from npc_server.protocol.codes import CloseCode
from npc_server.transports.websocket import WebSocketEdge
from npc_server.turns import Turn as ServerTurn
from tests.support.server import RunningServer, running_server, server_config

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0
# Long replies: ~150 tokens a second, so a turn lasts long enough to cut it.
LONG = {"tokens_per_second": 150, "long_reply_chars": 800}
SLOW_LONG = {"tokens_per_second": 50, "long_reply_chars": 3000}


def server_turn(server: RunningServer, turn: Turn) -> ServerTurn:
    """The server's own record of a turn (registered before the ack is sent)."""
    entry = server.node.turns.get(turn.id)
    assert entry is not None
    return entry[1]


def edge_of(server: RunningServer, npc: NpcClient) -> WebSocketEdge:
    """The server's socket for this client's session."""
    for edge in server.node.sockets:
        session = edge.session if isinstance(edge, WebSocketEdge) else None
        if isinstance(edge, WebSocketEdge) and session is not None and session.id == npc.session:
            return edge
    raise AssertionError(f"no server socket for session {npc.session}")


async def read_until(turn: Turn, chars: int) -> list[Text]:
    """Consume text pieces until at least `chars` characters arrived."""
    pieces: list[Text] = []
    async with asyncio.timeout(TIMEOUT):
        async for item in turn:
            if isinstance(item, Text):
                pieces.append(item)
                if turn.consumed >= chars:
                    return pieces
    raise AssertionError(f"turn ended after {turn.consumed} characters")


async def read_all(turn: Turn) -> list[Text | Action]:
    async with asyncio.timeout(TIMEOUT):
        return [item async for item in turn]


def assert_contiguous(pieces: Sequence[Text]) -> None:
    """Every piece starts where the previous one ended: no gap, no duplicate."""
    offset = 0
    for piece in pieces:
        assert piece.at == offset, f"piece at {piece.at}, expected {offset}"
        offset += len(piece)


class TcpProxy:
    """Forwards TCP to the server; `cut()` drops every connection like a dead network."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@contextlib.asynccontextmanager
async def client(
    server: RunningServer, player: str = "alice", **options: Any
) -> AsyncIterator[NpcClient]:
    npc = await connect(server.url, server.token(player), **options)
    try:
        yield npc
    finally:
        await npc.close()


# --- conversations ----------------------------------------------------------


async def test_conversation_streams_the_servers_text() -> None:
    """A say yields the reply in pieces whose text equals what the server generated."""
    async with running_server() as server, client(server) as npc:
        assert (npc.player, npc.state) == ("alice", ConnectionState.OPEN)
        assert npc.limits["rate_per_s"] > 0
        turn = await npc.say("merchant", "hello")
        generated = server_turn(server, turn)
        items = await read_all(turn)
        pieces = [item for item in items if isinstance(item, Text)]
        assert len(pieces) > 1, "the reply should stream in pieces"
        assert_contiguous(pieces)
        assert "".join(pieces) == generated.text
        assert (turn.reason, turn.chars, turn.npc) == ("done", len(generated.text), "merchant")
        assert await turn.text() == generated.text


async def test_turn_text_collects_a_whole_reply() -> None:
    """`Turn.text()` returns the full reply, including pieces consumed before it."""
    async with running_server(server_config(scripted=LONG)) as server, client(server) as npc:
        turn = await npc.say("merchant", "any news?")
        generated = server_turn(server, turn)
        first = await read_until(turn, 10)
        text = await asyncio.wait_for(turn.text(), TIMEOUT)
        assert text.startswith("".join(first))
        assert text == generated.text
        assert turn.chars == len(text)


async def test_interrupt_stops_a_turn_mid_reply() -> None:
    """After `interrupt()` nothing more is yielded and the turn ends as interrupted."""
    async with running_server(server_config(scripted=SLOW_LONG)) as server, client(server) as npc:
        turn = await npc.say("merchant", "what do you sell?")
        generated = server_turn(server, turn)
        await read_until(turn, 40)
        await turn.interrupt()
        after = await read_all(turn)
        assert after == []
        assert turn.reason == "interrupted"
        assert turn.chars is not None
        assert turn.kept is not None
        assert turn.kept <= turn.chars < 3000
        assert turn.kept <= turn.consumed
        assert generated.kept == turn.kept


async def test_client_interrupt_targets_the_newest_turn() -> None:
    """`NpcClient.interrupt()` stops the newest turn still going."""
    async with running_server(server_config(scripted=SLOW_LONG)) as server, client(server) as npc:
        turn = await npc.say("guard", "tell me about the gate")
        await read_until(turn, 1)
        await npc.interrupt()
        await read_all(turn)
        assert turn.reason == "interrupted"


@pytest.mark.parametrize(("accept", "status"), [(True, "accepted"), (False, "declined")])
async def test_action_approval(accept: bool, status: str) -> None:
    """An action asking for approval is answered and reports its final status."""
    async with running_server() as server, client(server) as npc:
        turn = await npc.say("merchant", "what do you sell?")
        items = await read_all(turn)
        actions = [item for item in items if isinstance(item, Action)]
        assert [a.name for a in actions] == ["open_shop"]
        shop = actions[0]
        assert shop.approval
        assert shop.status is None
        assert turn.chars is not None
        assert shop.at <= turn.chars
        await (shop.accept() if accept else shop.decline())
        assert await asyncio.wait_for(shop.wait(), TIMEOUT) == status
        assert shop.status == status


# --- reconnects -------------------------------------------------------------


@pytest.mark.parametrize("session_kept", [True, False], ids=["resumed", "snapshot"])
async def test_server_cut_mid_turn_loses_no_text(session_kept: bool) -> None:
    """A 4000 close mid-turn is invisible: the text arrives complete and exactly once."""
    async with running_server(server_config(scripted=LONG)) as server, client(server) as npc:
        first_session = npc.session
        turn = await npc.say("merchant", "any news?")
        generated = server_turn(server, turn)
        pieces = await read_until(turn, 100)
        edge = edge_of(server, npc)
        if not session_kept:
            assert edge.session is not None
            server.node.end_session(edge.session)  # resume fails: welcome{resumed:false}
        edge.request_close(CloseCode.SLOW_CONSUMER)
        assert not turn.ended
        pieces += [item for item in await read_all(turn) if isinstance(item, Text)]
        assert_contiguous(pieces)
        assert "".join(pieces) == generated.text
        assert (turn.reason, turn.chars) == ("done", len(generated.text))
        stats = npc.statistics()
        assert stats.connects == 2
        assert stats.resumed == (1 if session_kept else 0)
        assert (npc.session == first_session) is session_kept


async def test_network_drop_mid_turn_resumes() -> None:
    """A connection dropped without a close frame (1006) is resumed with no text lost."""
    async with running_server(server_config(scripted=LONG)) as server:
        proxy = TcpProxy(server.host, server.port)
        url = await proxy.start()
        try:
            async with await connect(url, server.token("alice")) as npc:
                turn = await npc.say("merchant", "any news?")
                generated = server_turn(server, turn)
                pieces = await read_until(turn, 100)
                proxy.cut()
                pieces += [item for item in await read_all(turn) if isinstance(item, Text)]
                assert_contiguous(pieces)
                assert "".join(pieces) == generated.text
                assert npc.statistics().resumed == 1
        finally:
            await proxy.close()


async def test_draining_server_is_resumed_after_retry_after() -> None:
    """`draining` lets the turn finish on the old socket, then the client resumes."""
    async with running_server(server_config(scripted=LONG)) as server, client(server) as npc:
        turn = await npc.say("merchant", "any news?")
        generated = server_turn(server, turn)
        events = npc.events()
        await drain(server.node, grace=TIMEOUT, retry_after=0.05)
        assert await asyncio.wait_for(anext(events), TIMEOUT) == Draining(0.05)
        assert await asyncio.wait_for(turn.text(), TIMEOUT) == generated.text
        server.node.draining = False  # as if a fresh node took over the address
        await asyncio.wait_for(npc.ping(), TIMEOUT)
        assert npc.statistics().resumed == 1


async def test_terminal_close_code_stops_without_reconnecting() -> None:
    """A 4501 close ends the client for good and fails the open turn."""
    async with running_server(server_config(scripted=SLOW_LONG)) as server, client(server) as npc:
        turn = await npc.say("merchant", "any news?")
        await read_until(turn, 1)
        edge = edge_of(server, npc)
        edge.request_close(CloseCode.PROTOCOL_VIOLATION, "test")
        with pytest.raises(ConnectionClosedError) as closed:
            await asyncio.wait_for(npc.wait_closed(), TIMEOUT)
        assert (closed.value.code, closed.value.reconnectable) == (4501, False)
        with pytest.raises(ConnectionClosedError):
            await read_all(turn)
        assert npc.state is ConnectionState.CLOSED
        await asyncio.wait_for(edge.finished.wait(), TIMEOUT)
        assert npc.statistics().reconnect_attempts == 0
        assert server.node.sockets == set()


async def test_bad_token_is_refused_with_4500() -> None:
    """A bad token raises `ConnectionClosedError(4500)`, not reconnectable."""
    async with running_server() as server:
        with pytest.raises(ConnectionClosedError) as refused:
            await connect(server.url, "not-a-token")
        assert refused.value.code == 4500
        assert not refused.value.reconnectable
        assert server.node.hub.all_sessions() == []


async def test_expired_token_needs_a_token_provider() -> None:
    """A 4002 close resumes with the provider's new token, and stops without one."""
    async with running_server() as server:
        fresh: list[str] = []

        async def provide() -> str:
            fresh.append(server.token("alice"))
            return fresh[-1]

        async with client(server, token_provider=provide) as renewing:
            edge_of(server, renewing).request_close(CloseCode.TOKEN_EXPIRED)
            await asyncio.wait_for(renewing.ping(), TIMEOUT)
            assert len(fresh) == 1
            assert renewing.statistics().resumed == 1
        async with client(server, "bob") as plain:
            edge_of(server, plain).request_close(CloseCode.TOKEN_EXPIRED)
            with pytest.raises(ConnectionClosedError) as closed:
                await asyncio.wait_for(plain.wait_closed(), TIMEOUT)
            assert (closed.value.code, closed.value.reconnectable) == (4002, False)


# --- requests, errors, heartbeat, seen ------------------------------------


async def test_errors_raise_typed_exceptions() -> None:
    """Error frames raise the matching `NpcError` subclass and the socket stays usable."""
    async with running_server() as server, client(server) as npc:
        with pytest.raises(UnknownNpc) as unknown:
            await npc.say("dragon", "hello")
        assert unknown.value.code == "unknown_npc"
        with pytest.raises(NotInRoom):
            await npc.say("merchant", "hello", room="tavern")
        with pytest.raises(NotInRoom):
            await npc.leave("tavern")
        with pytest.raises(UnknownAction):
            await npc.act("a-none", True)
        with pytest.raises(TooLong):
            await npc.say("merchant", "x" * (npc.limits["text_chars"] + 1))
        turn = await npc.say("merchant", "hello")
        assert (await asyncio.wait_for(turn.text(), TIMEOUT)).startswith("Welcome")


class FailingBackend:
    """Says a few words, then fails like a model server that went away."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        yield TextPiece("Let me think")
        raise GenerationError("the model server went away")

    async def aclose(self) -> None:
        return None


async def test_backend_error_ends_the_turn_with_reason_error() -> None:
    """A failed generation ends iteration (no raise) with reason error and the error kept."""
    async with (
        running_server(backends={"merchant": FailingBackend()}) as server,
        client(server) as npc,
    ):
        turn = await npc.say("merchant", "hello")
        assert await asyncio.wait_for(turn.text(), TIMEOUT) == "Let me think"
        assert turn.reason == "error"
        assert isinstance(turn.error, BackendError)
        assert "went away" in turn.error.message


async def test_queued_say_reports_its_place() -> None:
    """A say to a busy merchant is queued (`ack.queued`) and streams after the first."""
    async with running_server(server_config(scripted=LONG)) as server, client(server) as npc:
        first = await npc.say("merchant", "any news?")
        second = await npc.say("merchant", "hello")
        assert (first.queued, second.queued) == (None, 1)
        await asyncio.wait_for(first.text(), TIMEOUT)
        text = await asyncio.wait_for(second.text(), TIMEOUT)
        assert second.reason == "done"
        assert len(text) == second.chars


async def test_server_pings_are_answered() -> None:
    """Server pings get pongs from the reader, so a short heartbeat never closes."""
    config = server_config(limits={"heartbeat": 0.25}, scripted={**LONG, "tokens_per_second": 100})
    async with running_server(config) as server, client(server) as npc:
        turn = await npc.say("merchant", "any news?")
        await asyncio.wait_for(turn.text(), TIMEOUT)
        stats = npc.statistics()
        assert stats.pings_answered >= 3
        assert stats.connects == 1
        rtt = await npc.ping()
        assert npc.latency == rtt > 0


async def test_seen_reports_reach_the_server() -> None:
    """Consumed text is reported with throttled `seen` frames."""
    async with running_server(server_config(scripted=LONG)) as server, client(server) as npc:
        turn = await npc.say("merchant", "any news?")
        generated = server_turn(server, turn)
        text = await asyncio.wait_for(turn.text(), TIMEOUT)
        seen = npc.statistics().seen_sent
        assert 1 <= seen <= 4 * 10  # at most every 250 ms over a turn of a few seconds
        assert generated.shown is not None
        assert 0 < generated.shown <= len(text)


async def test_room_turns_and_events_reach_other_members() -> None:
    """Room members get presence, `said` and the NPC's turn through the iterators."""
    async with running_server() as server, client(server, "bob") as bob:
        events = bob.events()
        turns = bob.turns()
        await bob.join("tavern")
        assert await asyncio.wait_for(anext(events), TIMEOUT) == Members("tavern", ("bob",))
        async with client(server, "alice") as alice:
            alice_events = alice.events()
            await alice.join("tavern")
            assert await asyncio.wait_for(anext(events), TIMEOUT) == Presence(
                "tavern", "alice", "joined"
            )
            roster = await asyncio.wait_for(anext(alice_events), TIMEOUT)
            assert roster == Members("tavern", ("alice", "bob"))
            mine = await alice.say("merchant", "hello", room="tavern")
            assert await asyncio.wait_for(anext(events), TIMEOUT) == Said(
                "tavern", "alice", "merchant", "hello"
            )
            theirs = await asyncio.wait_for(anext(turns), TIMEOUT)
            assert (theirs.id, theirs.player, theirs.room, theirs.mine) == (
                mine.id,
                "alice",
                "tavern",
                False,
            )
            generated = server_turn(server, mine)
            texts = await asyncio.wait_for(asyncio.gather(mine.text(), theirs.text()), TIMEOUT)
            assert texts[0] == texts[1] == generated.text


def test_a_room_gap_frame_is_an_event() -> None:
    """`room.gap` (cluster mode: room talk from other servers may be missing) reaches the
    app as `RoomGap`, as the other room events do."""
    from npc_client.events import Members, RoomGap, event_from_frame

    assert event_from_frame({"t": "room.gap", "seq": 9, "room": "inn"}) == RoomGap("inn")
    frame = {"t": "members", "seq": 3, "room": "inn", "members": ["a", "b"], "partial": True}
    assert event_from_frame(frame) == Members("inn", ("a", "b"), True)
