"""Backend for OpenAI-compatible chat-completion servers (vLLM, llama.cpp, Ollama, ...).

One `AsyncOpenAI` client per backend (one connection pool shared by its
turns). The SDK builds and sends each request, authenticates, and maps error
statuses; the streamed body is read raw (`with_streaming_response`): `SSEDecoder`
splits the bytes into events, orjson parses each, `StreamAssembler` turns the
dicts into pieces. No SDK model object is built per chunk. The backend adds:

- first token / idle between chunks / total: one lazily re-armed `Deadline`
  timer per turn, armed only while a read is awaited (never across a yield);
- retries only while opening the stream, so no piece is ever sent twice;
- cancellation or any failure closes the HTTP response in `finally`, so the
  model server sees the disconnect and stops generating.

Settings are documented in docs/backends.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
import orjson
from openai import AsyncOpenAI, AsyncStream
from openai._response import AsyncAPIResponse, AsyncResponseContextManager
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionStreamOptionsParam,
)

from npc_server.backends.base import (
    GenerationError,
    GenerationRequest,
    Piece,
    TextPiece,
    ToolCallPiece,
    UsagePiece,
)
from npc_server.backends.chat_chunks import MalformedChunk, StreamAssembler
from npc_server.backends.deadline import Deadline, Expired
from npc_server.backends.stream_reader import MALFORMED, EventReader, TurnLimits
from npc_server.npcs import NpcConfig
from npc_server.prompt import (
    DEFAULT_MAX_PROMPT_CHARS,
    Message,
    build_messages,
    build_tools,
    tool_round,
)

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

DUMMY_API_KEY = "not-needed"
UPSTREAM_MESSAGE_CHARS = 200
BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 4.0
STREAM_ERROR = "An error occurred during streaming"  # the SDK's words for an error without text
# Completion requests one turn may make: the first, and one after each round of tool calls.
MAX_TOOL_ROUNDS = 3
_NUMBERS = (int, float)
_TIMEOUTS = ("connect_timeout_s", "first_token_timeout_s", "idle_timeout_s", "total_timeout_s")
_Rule = tuple[tuple[str, ...], type | tuple[type, ...], Callable[[Any], bool], str]
_RULES: tuple[_Rule, ...] = (
    (("base_url",), str, lambda v: v.startswith(("http://", "https://")), "an http(s) URL"),
    (("model",), str, lambda v: bool(v.strip()), "a non-empty string"),
    (("api_key_env",), str, bool, "a non-empty string"),
    (("temperature",), _NUMBERS, lambda v: 0 <= v <= 2, "a number in 0..2"),
    (("top_p",), _NUMBERS, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    (("max_tokens", "max_prompt_chars"), int, lambda v: v > 0, "a positive integer"),
    (_TIMEOUTS, _NUMBERS, lambda v: v > 0, "a positive number of seconds"),
    (("retries",), int, lambda v: 0 <= v <= 10, "an integer in 0..10"),
    (("include_usage", "use_tools"), bool, lambda v: True, "true or false"),
    (("extra_body",), dict, lambda v: True, "a table"),
)


@dataclass(frozen=True, slots=True)
class OpenAISettings:
    """The `[backend]` table of an NPC with `kind = "openai"`, validated."""

    base_url: str
    model: str
    api_key_env: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    connect_timeout_s: float = 5.0
    first_token_timeout_s: float = 20.0
    idle_timeout_s: float = 15.0
    total_timeout_s: float = 120.0
    retries: int = 2
    include_usage: bool = True
    use_tools: bool = True
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS

    @classmethod
    def parse(cls, npc_id: str, raw: Mapping[str, Any]) -> OpenAISettings:
        """Check every key; errors name the NPC and the key (never a secret)."""
        allowed = cls.__dataclass_fields__.keys()
        for key in raw:
            if key not in allowed:
                raise _bad(npc_id, key, f"is not a setting; expected one of {sorted(allowed)}")
        for key in ("base_url", "model"):
            if key not in raw:
                raise _bad(npc_id, key, "is required")
        for rule in _RULES:
            _check(npc_id, raw, rule)
        return cls(**raw)


def _bad(npc_id: str, key: str, problem: str) -> ValueError:
    return ValueError(f"NPC {npc_id!r}: [backend] {key!r} {problem}")


def _check(npc_id: str, raw: Mapping[str, Any], rule: _Rule) -> None:
    keys, kind, ok, expected = rule
    for key in (k for k in keys if k in raw):
        value = raw[key]
        wrong_kind = not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)
        if wrong_kind or not ok(value):
            raise _bad(npc_id, key, f"must be {expected}, got {value!r}")


def read_api_key(npc_id: str, env_name: str | None) -> str:
    """The key from the named environment variable, or a dummy for keyless servers."""
    if env_name is None:
        return DUMMY_API_KEY
    key = os.environ.get(env_name, "")
    if not key:
        raise _bad(
            npc_id, "api_key_env", f"names environment variable {env_name!r}, which is unset"
        )
    return key


class OpenAIBackend:
    """Streams NPC turns from an OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(
        self, npc: NpcConfig, settings: Mapping[str, Any], *, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.npc = npc
        self.settings = OpenAISettings.parse(npc.id, settings)
        self._secret = read_api_key(npc.id, self.settings.api_key_env)
        self._sleep = sleep
        s = self.settings
        # Read timeouts are enforced per chunk in generate(); httpx's is only a backstop.
        timeout = httpx2.Timeout(s.connect_timeout_s, read=s.total_timeout_s)
        self._client = AsyncOpenAI(
            base_url=s.base_url, api_key=self._secret, max_retries=0, timeout=timeout
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.close()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        """Stream one turn; raise `GenerationError` on failure, let cancellation through.

        A tool call is yielded as soon as it is complete; the turn runner fills in
        its answer before asking for the next piece. Once the stream ends, the
        calls and their answers go back to the model (an assistant message with
        `tool_calls`, one `tool` message each) in a new request, whose stream
        continues the reply, as OpenAI function calling does.
        """
        messages = build_messages(request, self.settings.max_prompt_chars)
        prompt = completion = 0
        usage = False
        for round_ in range(MAX_TOOL_ROUNDS + 1):
            calls: list[ToolCallPiece] = []
            said: list[str] = []
            async for piece in self._round(messages):
                if isinstance(piece, UsagePiece):
                    usage = True
                    prompt, completion = (
                        prompt + piece.prompt_tokens,
                        completion + piece.completion_tokens,
                    )
                    continue
                if isinstance(piece, ToolCallPiece):
                    if round_ == MAX_TOOL_ROUNDS:
                        log.warning(
                            "NPC %r: tool call past %d rounds; skipped", self.npc.id, round_
                        )
                        continue
                    calls.append(piece)
                elif isinstance(piece, TextPiece):
                    said.append(piece.text)
                yield piece
            if not calls:
                break
            messages = [*messages, *tool_round("".join(said), calls)]
        if usage:
            yield UsagePiece(prompt, completion)

    async def _round(self, messages: list[Message]) -> AsyncIterator[Piece]:
        """One completion request and its stream."""
        limits = TurnLimits(self.settings)
        deadline = Deadline()
        response: httpx2.Response | None = None
        try:
            response = await self._open(messages, limits, deadline)
            reader = EventReader(response, limits, deadline)
            assembler = StreamAssembler(self.npc)
            while (payloads := await reader.next_events(assembler.started)) is not None:
                for payload in payloads:
                    for piece in self._feed(assembler, payload):
                        yield piece
            for piece in _finish(assembler):
                yield piece
        finally:
            deadline.close()
            if response is not None:
                await response.aclose()

    def _feed(self, assembler: StreamAssembler, payload: bytes) -> list[Piece]:
        try:
            chunk = orjson.loads(payload)
            if not isinstance(chunk, dict):
                raise MalformedChunk("a chunk is not an object")
            if error := chunk.get("error"):
                detail = self._scrub(_upstream_message(error) or STREAM_ERROR)
                raise GenerationError(f"the model server reported an error: {detail}")
            return assembler.feed(chunk)
        except ValueError:  # not JSON, or not shaped like a chunk
            raise GenerationError(MALFORMED) from None

    async def _open(
        self, messages: list[Message], limits: TurnLimits, deadline: Deadline
    ) -> httpx2.Response:
        """Send the request; retry connect errors, 429 and 5xx before any piece exists."""
        loop = asyncio.get_running_loop()
        s = self.settings
        for attempt in range(s.retries + 1):
            limits.start_attempt()
            try:
                return await self._send(messages, limits, deadline)
            except openai.OpenAIError as exc:
                delay = _retry_delay(exc, attempt)
                if attempt == s.retries or delay is None or loop.time() + delay >= limits.total_at:
                    raise self._error(exc) from None
                failure = type(exc).__name__
                log.warning(
                    "NPC %r: %s; retry %d in %.2f s", self.npc.id, failure, attempt + 1, delay
                )
                await self._sleep(delay)
            except GenerationError:
                raise
            except Exception:
                log.exception("NPC %r: unexpected failure sending the request", self.npc.id)
                raise GenerationError("the model client failed to send the request") from None
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _send(
        self, messages: list[Message], limits: TurnLimits, deadline: Deadline
    ) -> httpx2.Response:
        """One attempt: the response once its headers are in (error statuses raise)."""
        when = limits.next_wait(started=False)
        try:
            # Entering the manager sends the request; the body is read by EventReader.
            response = await deadline.wait(self._create(messages).__aenter__(), when)
        except Expired:
            raise limits.expired(when) from None
        return response.http_response

    def _create(
        self, messages: list[Message]
    ) -> AsyncResponseContextManager[AsyncAPIResponse[AsyncStream[ChatCompletionChunk]]]:
        s = self.settings
        tools = build_tools(self.npc.actions, self.npc.tools) if s.use_tools else []
        usage: ChatCompletionStreamOptionsParam = {"include_usage": True}
        # The SDK's parameter transform walks every message and tool through their
        # TypedDict annotations: about 0.3 ms a message, 15 ms a turn for a memory of
        # 50 messages, more than the whole stream costs. prompt.py and build_tools
        # already build plain dicts of the documented shapes, so they go in
        # extra_body, which the SDK sends as is (over the empty `messages`).
        raw: dict[str, object] = {"messages": messages}
        if tools:
            raw["tools"] = tools
        # The raw response: the SDK sends, authenticates and maps error statuses, but
        # builds no model object per chunk (orjson reads the bytes instead).
        return self._client.chat.completions.with_streaming_response.create(
            model=s.model,
            messages=[],
            stream=True,
            stream_options=usage if s.include_usage else openai.omit,
            temperature=s.temperature if s.temperature is not None else openai.omit,
            top_p=s.top_p if s.top_p is not None else openai.omit,
            max_tokens=s.max_tokens if s.max_tokens is not None else openai.omit,
            extra_body={**s.extra_body, **raw},
        )

    def _error(self, exc: openai.OpenAIError) -> GenerationError:
        """The one place where client exceptions from sending become player-safe errors."""
        s = self.settings
        if isinstance(exc, openai.APITimeoutError):
            if isinstance(exc.__cause__, httpx2.ConnectTimeout):
                text = f"could not connect to the model server within {s.connect_timeout_s:g} s"
            else:
                text = "the model server did not answer in time"
            return GenerationError(text, reason="timeout")
        if isinstance(exc, openai.APIConnectionError):
            return GenerationError("could not reach the model server")
        if isinstance(exc, openai.APIStatusError):
            detail = self._scrub(_upstream_message(exc.body) or exc.response.reason_phrase)
            return GenerationError(f"the model server answered HTTP {exc.status_code}: {detail}")
        if isinstance(exc, openai.APIError):
            detail = self._scrub(_upstream_message(exc.body) or exc.message)
            return GenerationError(f"the model server reported an error: {detail}")
        return GenerationError(f"the model client failed: {type(exc).__name__}")

    def _scrub(self, text: str) -> str:
        if self._secret != DUMMY_API_KEY:
            text = text.replace(self._secret, "***")
        return text[:UPSTREAM_MESSAGE_CHARS]


def _finish(assembler: StreamAssembler) -> list[Piece]:
    """The pieces after the last chunk: pending tool calls, then usage."""
    if not assembler.finished:
        raise GenerationError("the model server ended the reply without finishing it")
    pieces = assembler.flush()
    if assembler.usage is not None:
        pieces.append(assembler.usage)
    return pieces


def _upstream_message(body: object) -> str:
    """The `message` of an OpenAI-style error body (already unwrapped from `error`)."""
    if isinstance(body, Mapping):
        message = body.get("message", body.get("error", ""))
        return message if isinstance(message, str) else json.dumps(message, default=str)
    return body if isinstance(body, str) else ""


def _retry_delay(exc: openai.OpenAIError, attempt: int) -> float | None:
    """Seconds to wait before retrying, or None when `exc` is not worth a retry."""
    backoff = min(BACKOFF_BASE_S * 2.0**attempt, BACKOFF_MAX_S)
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code != 429 and exc.status_code < 500:
            return None
        try:
            hinted = float(exc.response.headers.get("retry-after", ""))
        except ValueError:
            return backoff
        return min(max(hinted, 0.0), BACKOFF_MAX_S)
    if isinstance(exc, openai.APITimeoutError):
        return backoff if isinstance(exc.__cause__, httpx2.ConnectTimeout) else None
    if isinstance(exc, openai.APIConnectionError):
        return backoff
    return None
