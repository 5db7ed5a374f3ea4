"""Fuzzed and malformed frames on a live socket get exactly the specified answers."""

from __future__ import annotations

import pytest

from npc_server.protocol.codes import CloseCode, ErrorCode
from tests.stress.scenarios import QUICK, malformed_protocol
from tests.support.client import connect
from tests.support.server import running_server

pytestmark = pytest.mark.e2e


async def test_fuzzed_frames_get_the_specified_errors_and_closes() -> None:
    """bad_frame, unknown_type, too_long, 1009, 4500 and 4501 as specified; no crash, no leak."""
    report = await malformed_protocol(QUICK)
    assert report.leaks.clean, report.leaks.summary()


# The message: 16 KiB of nested array16 headers each claiming 16383 elements.
ATTACK = b"\xdc\x3f\xff" * (16 * 1024 // 3)


async def test_nested_length_claims_are_refused_before_and_after_hello() -> None:
    """The attack message closes 4500 before hello and is a bad_frame after it, on a live socket."""
    async with running_server() as server:
        async with connect(server.url) as fresh:
            await fresh.send_raw(ATTACK)
            assert await fresh.close_code() == CloseCode.AUTH_FAILED
        async with connect(server.url) as player:
            await player.hello(server.token("alice"))
            await player.send_raw(ATTACK)
            error = await player.expect("error")
            assert error["code"] == ErrorCode.BAD_FRAME and "claims 16383" in error["message"]
            await player.send({"t": "ping", "id": "after"})
            assert (await player.expect("pong"))["id"] == "after"


async def test_room_names_outside_the_safe_set_are_bad_frames_on_a_socket() -> None:
    """join with a control character or a space in the room is a bad_frame naming the rule."""
    async with running_server() as server, connect(server.url) as player:
        await player.hello(server.token("alice"))
        for request_id, room in ((1, "inn\x07"), (2, "the inn")):
            await player.send({"t": "join", "id": request_id, "room": room})
            error = await player.expect("error")
            assert (error["code"], error["id"]) == (ErrorCode.BAD_FRAME, request_id)
            assert "join.room must be a room name" in error["message"]
        await player.send({"t": "join", "id": 3, "room": "inn"})
        assert (await player.expect("ack"))["id"] == 3
