"""The `openai` backend's raw stream reader over real HTTP: framing, splits, bad chunks, stalls."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from npc_server.backends.base import ActionPiece, TextPiece, UsagePiece

from .openai_stub import (
    Bytes,
    Chunk,
    Hang,
    OpenAIStub,
    Raw,
    StreamScenario,
    ToolCall,
    partial,
    reply,
)
from .openai_support import MS, MakeBackend, collect

# Every test reads its turns both ways (see `Reading`).
pytestmark = pytest.mark.usefixtures("reading")

# A compact body with every framing a server may use: a comment, CRLF and lone
# CR line ends, reasoning before content, a tool call split into fragments, a
# data field spread over two lines, a finish chunk, usage, [DONE].
BODY = (
    b": keep-alive\r\n"
    b'data: {"choices":[{"delta":{"role":"assistant","reasoning_content":"hm"}}]}\r\n\r\n'
    b'data: {"choices":[{"delta":{"content":"Here, "}}]}\n\n'
    b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1",'
    b'"function":{"name":"give_item","arguments":"{\\"it"}}]}}]}\n\n'
    b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,'
    b'"function":{"arguments":"em\\": \\"map\\"}"}}]}}]}\n\n'
    b'data: {"choices":[{"delta":{"content":"enjoy"},\r\ndata: "finish_reason":null}]}\r\n\r\n'
    b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\r\r'
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n'
    b"data: [DONE]\n\n"
)
PIECES = [
    TextPiece("Here, "),
    ActionPiece("give_item", {"item": "map"}),
    TextPiece("enjoy"),
    UsagePiece(prompt_tokens=3, completion_tokens=4),
]


async def test_every_framing_gives_the_pieces(stub: OpenAIStub, make_backend: MakeBackend) -> None:
    """Comments, CRLF/CR, multi-line data, reasoning, fragments, finish and usage decode right."""
    stub.script(StreamScenario((Bytes(BODY),)))
    assert await collect(make_backend()) == (PIECES, None)


async def test_a_split_at_every_position_gives_the_same_pieces(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """The body sent as two HTTP chunks, cut at each byte position, always gives the same pieces."""
    backend = make_backend()
    for cut in range(1, len(BODY)):
        stub.script(StreamScenario((Bytes(BODY[:cut]), Bytes(BODY[cut:]))))
        assert await collect(backend) == (PIECES, None), f"cut at {cut}"
    assert stub.connections_accepted == 1  # each body was read to its end


async def test_one_byte_per_http_chunk_gives_the_same_pieces(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """A server that flushes every byte on its own streams the same reply."""
    scenario = reply("Hi, ", ToolCall("give_item", ['{"item"', ': "map"}']), "bye.")
    stub.script(scenario, StreamScenario(scenario.steps, split=1))
    backend = make_backend()
    whole = await collect(backend)
    assert whole[1] is None
    assert await collect(backend) == whole


@pytest.mark.parametrize(
    "chunk",
    [
        [1, 2],
        "text",
        {"choices": "x"},
        {"choices": [1]},
        {"choices": [{"delta": []}]},
        {"choices": [{"delta": {"content": 5}}]},
        {"choices": [{"delta": {"tool_calls": {"index": 0}}}]},
        {"choices": [{"delta": {"tool_calls": [7]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": "0"}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": "f"}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": 3}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"function": {"arguments": {}}}]}}]},
        {"choices": [], "usage": "many"},
        {"choices": [], "usage": {"prompt_tokens": "12"}},
    ],
)
async def test_a_chunk_of_the_wrong_shape_is_a_malformed_chunk(
    chunk: Any, stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """Valid JSON with wrong types ends the turn with a clear error, keeping earlier text."""
    stub.script(partial("Hi", then=Raw(json.dumps(chunk))))
    pieces, error = await collect(make_backend())
    assert pieces == [TextPiece("Hi")]
    assert error is not None
    assert (error.reason, error.message) == ("error", "the model server sent a malformed chunk")


@pytest.mark.parametrize("data", [b"\xff\xfe", b"", b'{"choices": [', b"[DONE"])
async def test_undecodable_data_is_a_malformed_chunk(
    data: bytes, stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """Bytes that are not UTF-8 JSON (or empty data) are a malformed chunk."""
    stub.script(partial("Hi", then=Bytes(b"data: " + data + b"\n\n")))
    pieces, error = await collect(make_backend())
    assert pieces == [TextPiece("Hi")]
    assert error is not None
    assert error.message == "the model server sent a malformed chunk"


async def test_an_event_that_never_ends_is_refused(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """A data line over 1 MiB is a malformed chunk, not an ever-growing buffer."""
    stub.script(partial("Hi", then=Bytes(b"data: " + b"x" * (1 << 20) + b"x")))
    pieces, error = await collect(make_backend())
    assert pieces == [TextPiece("Hi")]
    assert error is not None
    assert error.message == "the model server sent a malformed chunk"


async def test_an_error_event_with_a_bare_string_names_it(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """`{"error": "text"}` mid-stream ends the turn with that text."""
    stub.script(partial("Hi", then=Raw(json.dumps({"error": "overloaded"}))))
    _, error = await collect(make_backend())
    assert error is not None
    assert error.message == "the model server reported an error: overloaded"


async def test_a_stall_inside_an_event_is_an_idle_timeout(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """Half an event then silence: the idle deadline fires, and the upstream is closed."""
    scenario = StreamScenario((*partial("Well", then=Bytes(b'data: {"choi')).steps, Hang()))
    stub.script(scenario)
    # Bounded well below the first-token wait: the idle limit, not that one, must end it.
    backend = make_backend(first_token_timeout_s=60.0, idle_timeout_s=100 * MS)
    pieces, error = await asyncio.wait_for(collect(backend), 5.0)
    assert pieces == [TextPiece("Well")]
    assert error is not None
    assert (error.reason, error.message) == ("timeout", "the model server stalled for over 0.1 s")
    await stub.requests[0].gone.wait()


async def test_keep_alive_comments_do_not_count_as_tokens(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """Comments before the first token leave the first-token deadline where it was."""
    role = Chunk({"role": "assistant", "content": ""})
    stub.script(StreamScenario((role, Bytes(b": ping\n\n" * 3), Hang())))
    _, error = await collect(make_backend(first_token_timeout_s=100 * MS, idle_timeout_s=5.0))
    assert error is not None
    assert (error.reason, error.message) == (
        "timeout",
        "the model server sent no reply within 0.1 s",
    )
