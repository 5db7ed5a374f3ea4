"""The `openai` backend against a real local HTTP server speaking the streaming format."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import socket
from collections.abc import AsyncGenerator
from typing import Any, cast

import pytest

from npc_server.backends import create_backend
from npc_server.backends.base import (
    ActionPiece,
    Piece,
    TextPiece,
    ToolCallPiece,
    UsagePiece,
)
from npc_server.backends.openai import OpenAIBackend
from npc_server.npcs import NpcConfig, ToolSpec

from .openai_stub import (
    Bytes,
    Chunk,
    Done,
    EndlessScenario,
    ErrorScenario,
    Hang,
    OpenAIStub,
    Raw,
    Reset,
    StreamScenario,
    ToolCall,
    partial,
    reply,
)
from .openai_support import (
    GIVE_PARAMS,
    MS,
    NPC,
    REQUEST,
    SECRET,
    MakeBackend,
    Reading,
    collect,
    text_of,
)

# Every test reads its turns both ways (see `Reading`).
pytestmark = pytest.mark.usefixtures("reading")

# Streaming and request shape


async def test_text_deltas_are_streamed_in_order(make_backend: MakeBackend) -> None:
    """Each content delta becomes one TextPiece, then the usage piece."""
    pieces, error = await collect(make_backend())
    assert error is None
    assert pieces == [
        TextPiece("Hello"),
        TextPiece(" there"),
        TextPiece("!"),
        UsagePiece(prompt_tokens=12, completion_tokens=5),
    ]


async def test_request_body_has_model_prompt_tools_and_options(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """The body carries model, persona, history, new text, tools, sampling and extra_body."""
    backend = make_backend(temperature=0.7, max_tokens=64, top_p=0.9, extra_body={"top_k": 20})
    await collect(backend)
    (sent,) = stub.requests
    body = sent.body
    assert (body["model"], body["stream"]) == ("npc-model", True)
    assert body["stream_options"] == {"include_usage": True}
    assert (body["temperature"], body["max_tokens"], body["top_p"], body["top_k"]) == (
        0.7,
        64,
        0.9,
        20,
    )
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert "A shrewd but warm merchant." in body["messages"][0]["content"]
    assert body["messages"][-1]["content"] == "What do you sell?"
    assert [t["function"]["name"] for t in body["tools"]] == ["open_shop", "give_item"]
    assert body["tools"][1]["function"]["parameters"] == GIVE_PARAMS
    assert sent.headers["authorization"] == "Bearer not-needed"


async def test_include_usage_off_omits_stream_options(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """include_usage = false sends no stream_options, and no usage piece comes back."""
    pieces, _ = await collect(make_backend(include_usage=False, use_tools=False))
    assert "stream_options" not in stub.requests[0].body
    assert "tools" not in stub.requests[0].body
    assert not any(isinstance(p, UsagePiece) for p in pieces)


async def test_first_delta_arrives_while_the_stream_is_still_open(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """A delta is yielded at once, not buffered until the stream ends."""
    stub.script(partial("Hel", then=Hang()))
    # generate() is typed as the Protocol's AsyncIterator; it is an async generator.
    generation = cast(AsyncGenerator[Piece, None], make_backend().generate(REQUEST))
    assert await asyncio.wait_for(anext(generation), 500 * MS) == TextPiece("Hel")
    await generation.aclose()
    await asyncio.wait_for(stub.requests[0].gone.wait(), 500 * MS)


async def test_api_key_comes_from_the_named_env_var(
    stub: OpenAIStub, make_backend: MakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """api_key_env names the variable whose value is sent as the bearer token."""
    monkeypatch.setenv("NPC_TEST_KEY", SECRET)
    await collect(make_backend(api_key_env="NPC_TEST_KEY"))
    assert stub.requests[0].headers["authorization"] == f"Bearer {SECRET}"


async def test_turns_reuse_one_connection(stub: OpenAIStub, make_backend: MakeBackend) -> None:
    """One client per backend: consecutive turns share a pooled connection."""
    backend = make_backend()
    for _ in range(3):
        assert (await collect(backend))[1] is None
    assert stub.connections_accepted == 1


# Tool calls


async def test_tool_call_split_across_chunks_lands_at_its_offset(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """Argument fragments are joined; the action sits between the text around it."""
    call = ToolCall("give_item", ['{"it', 'em": "ap', 'ple"}'])
    stub.script(reply("Here, ", call, "enjoy."))
    pieces, error = await collect(make_backend(include_usage=False))
    assert error is None
    assert pieces == [
        TextPiece("Here, "),
        ActionPiece("give_item", {"item": "apple"}),
        TextPiece("enjoy."),
    ]


async def test_consecutive_tool_calls_each_become_an_action(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """A second call index completes the first; finish_reason completes the last."""
    calls = (ToolCall("open_shop", ["{}"], "c1"), ToolCall("give_item", ['{"item":"map"}'], "c2"))
    stub.script(reply("Look!", *calls))
    pieces, _ = await collect(make_backend(include_usage=False))
    assert pieces == [
        TextPiece("Look!"),
        ActionPiece("open_shop", {}),
        ActionPiece("give_item", {"item": "map"}),
    ]


async def test_unknown_or_unparseable_tool_calls_are_skipped(
    stub: OpenAIStub, make_backend: MakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """An unknown tool name or broken JSON arguments log a warning and are dropped."""
    too_deep = '{"item":' + "[" * 14 + "]" * 14 + "}"  # 15 levels: no client frame holds it
    past_the_stack = '{"item":' + "[" * 100_000 + "]" * 100_000 + "}"  # RecursionError
    fits = '{"item":' + "[" * 13 + "]" * 13 + "}"  # 14 levels
    calls = (
        ToolCall("steal", ["{}"], "c1"),
        ToolCall("give_item", ['{"item":'], "c2"),
        ToolCall("give_item", [too_deep], "c3"),
        ToolCall("give_item", [past_the_stack], "c4"),
        ToolCall("give_item", [fits], "c5"),
    )
    stub.script(reply("Hm.", *calls, "Done."))
    with caplog.at_level(logging.WARNING):
        pieces, error = await collect(make_backend(include_usage=False))
    assert error is None
    assert pieces == [
        TextPiece("Hm."),
        ActionPiece("give_item", json.loads(fits)),
        TextPiece("Done."),
    ]
    assert "unknown action 'steal'; skipped (1 so far)" in caplog.text
    # Three skipped, two lines: the 1st and the 2nd (then the 4th, 8th ...).
    assert caplog.text.count("'give_item' has unparseable arguments") == 2
    assert "'give_item' has unparseable arguments; skipped (2 so far)" in caplog.text


async def test_a_model_that_keeps_calling_an_unknown_tool_is_logged_sparsely(
    stub: OpenAIStub, make_backend: MakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Nine skipped calls over three turns of one backend: lines for the 1st, 2nd, 4th
    and 8th, each with its count, so a looping model cannot flood the log."""
    backend = make_backend(include_usage=False)
    with caplog.at_level(logging.WARNING):
        for turn in range(3):
            stub.script(reply("Hm.", *(ToolCall("steal", ["{}"], f"c{turn}{i}") for i in range(3))))
            pieces, error = await collect(backend)
            assert error is None and pieces == [TextPiece("Hm.")]
    counts = [
        int(m) for m in re.findall(r"unknown action 'steal'; skipped \((\d+) so far\)", caplog.text)
    ]
    assert counts == [1, 2, 4, 8]


async def test_whole_tool_call_without_index_is_accepted(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """A call sent whole, without `index` and ended by finish "stop" (as Ollama does), works."""
    call = {
        "id": "call_9",
        "type": "function",
        "function": {"name": "open_shop", "arguments": "{}"},
    }
    whole = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    whole["choices"] = [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]
    steps = (Chunk({"role": "assistant", "content": "Come in."}), Raw(json.dumps(whole)))
    stub.script(StreamScenario((*steps, Chunk({}, "stop"), Done())))
    pieces, error = await collect(make_backend())
    assert error is None
    assert pieces == [TextPiece("Come in."), ActionPiece("open_shop", {})]


PURSE_REQUEST = dataclasses.replace(
    REQUEST, npc=dataclasses.replace(NPC, tools=(ToolSpec("check_purse", "The player's gold"),))
)
PURSE_CALL = {"index": 0, "id": "call_purse", "type": "function"}
PURSE_CALL["function"] = {"name": "check_purse", "arguments": "{}"}


def sse(*chunks: dict[str, Any]) -> bytes:
    """A whole stream body: one event per chunk, then [DONE]."""
    events = (b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks)
    return b"".join(events) + b"data: [DONE]\n\n"


def delta(finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": finish}]}


async def test_a_tool_call_holds_the_reply_until_answered_and_the_answer_goes_back(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """Text after a call, sent in the same write, is handed over only once the call is
    answered; the answer goes back in a second request whose stream continues the turn."""
    first = sse(
        delta(content="Let me see. "),
        delta(tool_calls=[PURSE_CALL]),
        delta(content="Hm, "),  # completes the call
        delta("stop"),
        {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5}},
    )
    stub.script(StreamScenario((Bytes(first),)), reply("seven gold."))
    seen_at_call: list[list[Piece]] = []

    def answer(call: ToolCallPiece, before: list[Piece]) -> None:
        seen_at_call.append(before)
        call.answer.status, call.answer.content = "answered", '{"gold":7}'

    pieces, error = await collect(make_backend(npc=PURSE_REQUEST.npc), PURSE_REQUEST, answer)
    assert error is None
    assert seen_at_call == [[TextPiece("Let me see. ")]]
    assert [p for p in pieces if not isinstance(p, ToolCallPiece)] == [
        TextPiece("Let me see. "),
        TextPiece("Hm, "),
        TextPiece("seven gold."),
        UsagePiece(24, 10),  # both requests
    ]
    assert [(p.name, p.call) for p in pieces if isinstance(p, ToolCallPiece)] == [
        ("check_purse", "call_purse")
    ]
    assert isinstance(pieces[1], ToolCallPiece)
    *_, assistant, tool = stub.requests[1].body["messages"]
    assert assistant["content"] == "Let me see. Hm, "
    assert tool == {"role": "tool", "tool_call_id": "call_purse", "content": '{"gold":7}'}


async def test_a_tool_call_past_the_last_round_is_skipped(
    stub: OpenAIStub, make_backend: MakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Three rounds of calls go back to the model; a fourth call is logged and dropped."""
    calls = [reply(f"{n}. ", ToolCall("check_purse", ("{}",), id=f"c{n}")) for n in range(4)]
    stub.script(*calls)
    with caplog.at_level(logging.WARNING):
        backend = make_backend(npc=PURSE_REQUEST.npc, include_usage=False)
        pieces, error = await collect(backend, PURSE_REQUEST)
    assert error is None
    assert [p.call for p in pieces if isinstance(p, ToolCallPiece)] == ["c0", "c1", "c2"]
    assert "".join(p.text for p in pieces if isinstance(p, TextPiece)) == "0. 1. 2. 3. "
    assert len(stub.requests) == 4
    assert "tool call past the last round; skipped" in caplog.text


# Errors


@pytest.mark.parametrize("status", [400, 401, 429, 500, 503])
async def test_http_error_names_status_and_hides_the_key(
    status: int,
    stub: OpenAIStub,
    make_backend: MakeBackend,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error status becomes reason "error" with status and upstream message, never the key."""
    monkeypatch.setenv("NPC_TEST_KEY", SECRET)
    stub.script(ErrorScenario(status, f"Incorrect API key provided: {SECRET}", code="bad_key"))
    with caplog.at_level(logging.DEBUG):
        pieces, error = await collect(make_backend(api_key_env="NPC_TEST_KEY"))
    assert pieces == []
    assert error is not None
    assert error.reason == "error"
    assert f"HTTP {status}" in error.message
    assert "Incorrect API key provided" in error.message
    assert SECRET not in error.message
    assert SECRET not in str(error)
    assert SECRET not in caplog.text


async def test_long_upstream_message_is_truncated(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """Only the first ~200 characters of an upstream error message are passed on."""
    stub.script(ErrorScenario(400, "x" * 5000, "invalid_request_error"))
    _, error = await collect(make_backend())
    assert error is not None
    assert 200 <= len(error.message) < 300


async def test_malformed_chunk_is_an_error(stub: OpenAIStub, make_backend: MakeBackend) -> None:
    """A chunk that is not JSON ends the turn with reason "error", keeping earlier text."""
    stub.script(partial("Hi", then=Raw('{"id": "chatcmpl-1", "choices": [')))
    pieces, error = await collect(make_backend())
    assert pieces == [TextPiece("Hi")]
    assert error is not None
    assert (error.reason, error.message) == ("error", "the model server sent a malformed chunk")


async def test_connection_reset_mid_stream_is_an_error(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """A TCP reset mid-reply is an error; the text streamed before it was already yielded."""
    stub.script(partial("Once ", "upon", then=Reset()))
    pieces, error = await collect(make_backend())
    assert text_of(pieces) == "Once upon"
    assert error is not None
    assert error.reason == "error"
    assert "cut mid-reply" in error.message


async def test_stream_ending_without_finish_reason_is_an_error(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """[DONE] before any finish_reason means the reply was cut short."""
    stub.script(partial("Half", then=Done()))
    pieces, error = await collect(make_backend())
    assert pieces == [TextPiece("Half")]
    assert error is not None
    assert "without finishing" in error.message


async def test_unreachable_server_is_an_error(make_backend: MakeBackend) -> None:
    """Connection refused, after the configured retries, is reason "error"."""
    with socket.socket() as sock:  # a port that was free a moment ago, with nobody on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps: list[float] = []
    backend = make_backend(sleeps, base_url=f"http://127.0.0.1:{port}/v1", retries=1)
    _, error = await collect(backend)
    assert error is not None
    assert (error.reason, error.message) == ("error", "could not reach the model server")
    assert sleeps == [0.25]


async def test_error_event_mid_stream_is_an_error(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """An `{"error": ...}` event inside the stream ends the turn with its message."""
    event = {"error": {"message": "out of KV cache", "type": "server_error", "code": None}}
    stub.script(partial("Let me", then=Raw(json.dumps(event))))
    pieces, error = await collect(make_backend())
    assert pieces == [TextPiece("Let me")]
    assert error is not None
    assert error.message == "the model server reported an error: out of KV cache"


# Timeouts


async def test_connect_timeout_is_retried_then_times_out(make_backend: MakeBackend) -> None:
    """A server whose accept queue is full never completes the handshake: connect timeout."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        fillers = [socket.socket() for _ in range(3)]  # fill the accept queue
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(server.getsockname())
        sleeps: list[float] = []
        url = "http://{}:{}/v1".format(*server.getsockname())
        backend = make_backend(sleeps, base_url=url, connect_timeout_s=100 * MS, retries=1)
        _, error = await collect(backend)
        for filler in fillers:
            filler.close()
    assert error is not None
    assert error.reason == "timeout"
    assert error.message == "could not connect to the model server within 0.1 s"
    assert sleeps == [0.25]


@pytest.mark.parametrize(
    "scenario",
    [partial(then=Hang()), StreamScenario((), hang_before_headers=True)],
    ids=["after-headers", "before-headers"],
)
async def test_hang_before_first_token_times_out(
    scenario: StreamScenario, stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """No token within first_token_timeout_s ends the turn with reason "timeout"."""
    stub.script(scenario)
    backend = make_backend(first_token_timeout_s=200 * MS)  # not timed: it loads TLS settings
    loop = asyncio.get_running_loop()
    started = loop.time()
    _, error = await collect(backend)
    elapsed = loop.time() - started
    assert error is not None
    assert (error.reason, error.message) == (
        "timeout",
        "the model server sent no reply within 0.2 s",
    )
    assert 200 * MS <= elapsed < 400 * MS
    # Under load the request may not even have reached the stub: the connection is what counts.
    await asyncio.wait_for(stub.no_connections(), 1.0)
    assert all(r.gone.is_set() for r in stub.requests)


async def test_idle_hang_mid_stream_times_out(stub: OpenAIStub, make_backend: MakeBackend) -> None:
    """A pause longer than idle_timeout_s between tokens is a timeout; earlier text is kept."""
    stub.script(partial("Well", then=Hang()))
    # Bounded well below the first-token wait: the idle limit, not that one, must end it.
    backend = make_backend(first_token_timeout_s=60.0, idle_timeout_s=150 * MS)
    pieces, error = await asyncio.wait_for(collect(backend), 5.0)
    assert pieces == [TextPiece("Well")]
    assert error is not None
    assert (error.reason, error.message) == ("timeout", "the model server stalled for over 0.15 s")
    await asyncio.wait_for(stub.requests[0].gone.wait(), 100 * MS)


async def test_reasoning_tokens_count_as_the_first_token(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """Streamed reasoning ends the first-token wait; a later stall is an idle timeout."""
    stub.script(StreamScenario((Chunk({"role": "assistant", "reasoning_content": "Hm"}), Hang())))
    backend = make_backend(first_token_timeout_s=60.0, idle_timeout_s=100 * MS)
    _, error = await asyncio.wait_for(collect(backend), 5.0)  # the idle limit ends it
    assert error is not None
    assert (error.reason, error.message) == ("timeout", "the model server stalled for over 0.1 s")


async def test_total_timeout_bounds_an_endless_stream(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """A stream that never ends is cut at total_timeout_s with reason "timeout"."""
    stub.script(EndlessScenario())
    pieces, error = await collect(make_backend(total_timeout_s=300 * MS))
    assert len(pieces) > 3
    assert error is not None
    assert (error.reason, error.message) == ("timeout", "the reply took longer than 0.3 s")
    await asyncio.wait_for(stub.requests[0].gone.wait(), 100 * MS)


# Retries


async def test_503_then_success_is_retried(stub: OpenAIStub, make_backend: MakeBackend) -> None:
    """A 5xx before the first token is retried after a short backoff; the reply then streams."""
    sleeps: list[float] = []
    stub.script(ErrorScenario(503, "loading model"))
    pieces, error = await collect(make_backend(sleeps, retries=2))
    assert error is None
    assert text_of(pieces) == "Hello there!"
    assert len(stub.requests) == 2
    assert sleeps == [0.25]


async def test_429_honours_retry_after(stub: OpenAIStub, make_backend: MakeBackend) -> None:
    """A 429 with Retry-After waits that long (capped) before the retry."""
    sleeps: list[float] = []
    stub.script(ErrorScenario(429, "slow down", "rate_limit", headers={"retry-after": "1.5"}))
    _, error = await collect(make_backend(sleeps, retries=1))
    assert error is None
    assert sleeps == [1.5]


async def test_retries_give_up_with_the_last_error(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """After `retries` extra attempts the last status is reported."""
    stub.script(*[ErrorScenario(500, f"boom {i}") for i in range(3)])
    sleeps: list[float] = []
    _, error = await collect(make_backend(sleeps, retries=2))
    assert error is not None
    assert error.message == "the model server answered HTTP 500: boom 2"
    assert (len(stub.requests), sleeps) == (3, [0.25, 0.5])


async def test_client_errors_are_not_retried(stub: OpenAIStub, make_backend: MakeBackend) -> None:
    """A 400 is the request's fault: no retry."""
    stub.script(ErrorScenario(400, "bad tools"))
    _, error = await collect(make_backend(retries=2))
    assert error is not None
    assert len(stub.requests) == 1


async def test_mid_stream_failure_is_not_retried(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """Once text was yielded, a failure ends the turn instead of replaying it."""
    stub.script(partial("Hi", then=Reset()))
    _, error = await collect(make_backend(retries=2))
    assert error is not None
    assert len(stub.requests) == 1


# Cancellation


async def cancel_after_first_piece(backend: OpenAIBackend) -> float:
    """Start a turn, cancel it once a piece arrived; return the loop time of the cancel."""
    first = asyncio.Event()

    async def consume() -> None:
        if Reading.mode == "deliver":
            async for _ in backend.deliver(REQUEST, lambda piece: first.set()):
                pass
            return
        async for _ in backend.generate(REQUEST):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 1.0)
    cancelled_at = asyncio.get_running_loop().time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return cancelled_at


async def test_cancel_mid_stream_closes_upstream_at_once(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """Cancelling the consumer closes the HTTP stream: the server sees it within 50 ms."""
    stub.script(EndlessScenario())
    cancelled_at = await cancel_after_first_piece(make_backend())
    request = stub.requests[0]
    await asyncio.wait_for(request.gone.wait(), 50 * MS)
    assert request.gone_at is not None
    assert request.gone_at - cancelled_at < 50 * MS
    await asyncio.wait_for(stub.no_connections(), 100 * MS)


async def test_cancel_before_headers_closes_the_request(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """A cancel while waiting for response headers also drops the connection."""
    stub.script(StreamScenario((), hang_before_headers=True))
    task = asyncio.create_task(collect(make_backend()))
    await asyncio.wait_for(stub.request_seen.wait(), 1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(stub.requests[0].gone.wait(), 50 * MS)


async def test_many_cancelled_turns_leak_no_connections(
    stub: OpenAIStub, make_backend: MakeBackend
) -> None:
    """After 50 turns cancelled mid-stream the server holds no open connection."""
    stub.default = EndlessScenario()
    backend = make_backend()
    for _ in range(50):
        await cancel_after_first_piece(backend)
    await asyncio.wait_for(stub.no_connections(), 500 * MS)
    assert len(stub.requests) == 50
    assert all(r.gone.is_set() for r in stub.requests)


# Settings


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"model": "m"}, "base_url"),
        ({"base_url": "http://x/v1"}, "model"),
        ({"base_url": "x.local/v1", "model": "m"}, "base_url"),
        ({"base_url": "http://x/v1", "model": "m", "temperature": "hot"}, "temperature"),
        ({"base_url": "http://x/v1", "model": "m", "retries": True}, "retries"),
        ({"base_url": "http://x/v1", "model": "m", "idle_timeout_s": 0}, "idle_timeout_s"),
        ({"base_url": "http://x/v1", "model": "m", "extra_body": [1]}, "extra_body"),
        ({"base_url": "http://x/v1", "model": "m", "max_connections": 0}, "max_connections"),
        ({"base_url": "http://x/v1", "model": "m", "base-url": "typo"}, "base-url"),
        ({"base_url": "http://x/v1", "model": "m", "api_key_env": "NPC_TEST_UNSET"}, "api_key_env"),
    ],
)
def test_bad_settings_name_the_npc_and_key(settings: dict[str, Any], key: str) -> None:
    """Invalid settings fail at construction with a ValueError naming the NPC and the key."""
    os.environ.pop("NPC_TEST_UNSET", None)
    with pytest.raises(ValueError, match=rf"NPC 'mira': \[backend\] '{key}'"):
        OpenAIBackend(NPC, settings)


async def test_create_backend_builds_the_openai_kind(stub: OpenAIStub) -> None:
    """kind = "openai" with server defaults and NPC settings merged builds this backend."""
    npc = NpcConfig(id="mira", name="Mira", backend="openai", backend_settings={"model": "m"})
    backend = create_backend(npc, defaults={"openai": {"base_url": stub.base_url}})
    assert isinstance(backend, OpenAIBackend)
    assert backend.settings.base_url == stub.base_url
    await backend.aclose()


# A real model server, when one is configured


@pytest.fixture
def real_server() -> dict[str, Any]:
    base_url = os.environ.get("NPC_TEST_OPENAI_BASE_URL")
    model = os.environ.get("NPC_TEST_OPENAI_MODEL")
    if not (base_url and model):
        pytest.skip("set NPC_TEST_OPENAI_BASE_URL and NPC_TEST_OPENAI_MODEL to run")
    settings: dict[str, Any] = {"base_url": base_url, "model": model, "max_tokens": 48}
    if os.environ.get("NPC_TEST_OPENAI_API_KEY"):
        settings["api_key_env"] = "NPC_TEST_OPENAI_API_KEY"
    return settings


@pytest.mark.e2e
async def test_real_server_streams_a_reply(real_server: dict[str, Any]) -> None:
    """A real OpenAI-compatible server streams text for a simple greeting."""
    backend = OpenAIBackend(NPC, {**real_server, "use_tools": False})
    try:
        pieces, error = await collect(backend)
    finally:
        await backend.aclose()
    assert error is None
    assert text_of(pieces).strip()
