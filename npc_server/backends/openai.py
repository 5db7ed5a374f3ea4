"""Backend for OpenAI-compatible chat-completion servers (vLLM, llama.cpp, Ollama, ...).

One `AsyncOpenAI` client per backend (one connection pool shared by its
turns). Each turn is one streamed request; `StreamAssembler` (no I/O) turns
chunks into pieces, the backend adds timeouts, retries and cleanup:

- first token / idle between chunks / total: asyncio deadlines around each
  awaited chunk (the generator never yields inside a timeout block);
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
from typing import Any, TypeVar, cast

import httpx2
import openai
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionMessageParam,
    ChatCompletionStreamOptionsParam,
    ChatCompletionToolUnionParam,
)
from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall

from npc_server.backends.base import (
    ActionPiece,
    GenerationError,
    GenerationRequest,
    Piece,
    TextPiece,
    UsagePiece,
)
from npc_server.npcs import NpcConfig
from npc_server.prompt import DEFAULT_MAX_PROMPT_CHARS, build_messages, build_tools

log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

DUMMY_API_KEY = "not-needed"
UPSTREAM_MESSAGE_CHARS = 200
BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 4.0
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


@dataclass(slots=True)
class _PendingCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class StreamAssembler:
    """Turns chat-completion chunks into pieces; no I/O, fed one chunk at a time.

    Tool-call argument fragments are gathered per `index`; a call is complete
    when another call or text starts, or when `finish_reason` arrives, and is
    emitted there, so its offset is the text streamed before it.
    """

    def __init__(self, npc: NpcConfig) -> None:
        self._npc = npc
        self._pending: dict[int, _PendingCall] = {}
        self.started = False  # a token (text, tool call or reasoning) has arrived
        self.finished = False  # a finish_reason has arrived
        self.usage: UsagePiece | None = None

    def feed(self, chunk: ChatCompletionChunk) -> list[Piece]:
        pieces: list[Piece] = []
        for choice in chunk.choices[:1]:
            delta = choice.delta
            if delta.content:
                self.started = True
                pieces += self.flush()
                pieces.append(TextPiece(delta.content))
            for call in delta.tool_calls or ():
                self.started = True
                pieces += self._add_call_fragment(call)
            if _has_reasoning(delta.model_extra):
                self.started = True
            if choice.finish_reason is not None:
                self.finished = True
                pieces += self.flush()
        if chunk.usage is not None:
            usage = chunk.usage
            self.usage = UsagePiece(usage.prompt_tokens or 0, usage.completion_tokens or 0)
        return pieces

    def flush(self) -> list[Piece]:
        """Emit every pending tool call, in index order."""
        pieces = [self._action(call) for _, call in sorted(self._pending.items())]
        self._pending.clear()
        return [p for p in pieces if p is not None]

    def _add_call_fragment(self, call: ChoiceDeltaToolCall) -> list[Piece]:
        index = self._index_of(call)
        pieces: list[Piece] = []
        if index not in self._pending:
            pieces = self.flush()  # a new call starts: the previous one is complete
            self._pending[index] = _PendingCall(id=call.id or "")
        pending = self._pending[index]
        if call.function is not None:
            pending.name = pending.name or call.function.name or ""
            pending.arguments.append(call.function.arguments or "")
        return pieces

    def _index_of(self, call: ChoiceDeltaToolCall) -> int:
        if isinstance(call.index, int):
            return call.index
        # Some servers omit `index`: a new call id then means a new call.
        last = max(self._pending, default=-1)
        if last < 0 or (call.id and call.id != self._pending[last].id):
            return last + 1
        return last

    def _action(self, call: _PendingCall) -> ActionPiece | None:
        if self._npc.action(call.name) is None:
            log.warning("NPC %r: model called unknown action %r; skipped", self._npc.id, call.name)
            return None
        text = "".join(call.arguments).strip() or "{}"
        try:
            args = json.loads(text)
        except ValueError:
            args = None
        if not isinstance(args, dict):
            log.warning(
                "NPC %r: action %r has unparseable arguments; skipped", self._npc.id, call.name
            )
            return None
        return ActionPiece(call.name, args)


def _has_reasoning(extra: Mapping[str, Any] | None) -> bool:
    # vLLM / DeepSeek / Ollama stream a model's thinking here before any content.
    return bool(extra and (extra.get("reasoning_content") or extra.get("reasoning")))


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
        """Stream one turn; raise `GenerationError` on failure, let cancellation through."""
        deadline = asyncio.get_running_loop().time() + self.settings.total_timeout_s
        stream, opened_at = await self._open(request, deadline)
        assembler = StreamAssembler(self.npc)
        try:
            while True:
                phase, limit = self._phase(assembler, opened_at)
                try:
                    chunk = await self._within(stream.__anext__(), phase, limit, deadline)
                except StopAsyncIteration:
                    break
                except openai.OpenAIError as exc:
                    raise self._error(exc, mid_stream=True) from None
                except ValueError:
                    raise GenerationError("the model server sent a malformed chunk") from None
                except GenerationError:
                    raise
                except Exception:
                    log.exception("NPC %r: unexpected failure reading the stream", self.npc.id)
                    raise GenerationError("the model client failed mid-reply") from None
                for piece in assembler.feed(chunk):
                    yield piece
            if not assembler.finished:
                raise GenerationError("the model server ended the reply without finishing it")
            for piece in assembler.flush():
                yield piece
            if assembler.usage is not None:
                yield assembler.usage
        finally:
            await stream.close()

    def _phase(self, assembler: StreamAssembler, opened_at: float) -> tuple[str, float]:
        """What the next chunk is waited for (first token or idle gap) and until when."""
        s = self.settings
        if not assembler.started:
            return self._first_token(opened_at)
        now = asyncio.get_running_loop().time()
        return f"the model server stalled for over {s.idle_timeout_s:g} s", now + s.idle_timeout_s

    def _first_token(self, started: float) -> tuple[str, float]:
        limit = self.settings.first_token_timeout_s
        return f"the model server sent no reply within {limit:g} s", started + limit

    async def _within(self, step: Awaitable[T], phase: str, limit: float, deadline: float) -> T:
        """Await `step` until `limit` (or the total deadline); expiry is a timeout error."""
        total = f"the reply took longer than {self.settings.total_timeout_s:g} s"
        timeout = asyncio.timeout_at(min(limit, deadline))
        try:
            async with timeout:
                return await step
        except TimeoutError:
            if not timeout.expired():
                raise
            raise GenerationError(phase if limit < deadline else total, reason="timeout") from None

    async def _open(
        self, request: GenerationRequest, deadline: float
    ) -> tuple[AsyncStream[ChatCompletionChunk], float]:
        """Send the request; retry connect errors, 429 and 5xx before any piece exists."""
        loop = asyncio.get_running_loop()
        s = self.settings
        for attempt in range(s.retries + 1):
            started = loop.time()
            phase, limit = self._first_token(started)
            try:
                return await self._within(self._create(request), phase, limit, deadline), started
            except openai.OpenAIError as exc:
                delay = _retry_delay(exc, attempt)
                if attempt == s.retries or delay is None or loop.time() + delay >= deadline:
                    raise self._error(exc, mid_stream=False) from None
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

    def _create(self, request: GenerationRequest) -> Awaitable[AsyncStream[ChatCompletionChunk]]:
        s = self.settings
        messages = build_messages(request, s.max_prompt_chars)
        tools = build_tools(self.npc.actions) if s.use_tools else []
        usage: ChatCompletionStreamOptionsParam = {"include_usage": True}
        return self._client.chat.completions.create(
            model=s.model,
            # prompt.py builds plain dicts of the documented shapes; the casts name them.
            messages=cast("list[ChatCompletionMessageParam]", messages),
            tools=cast("list[ChatCompletionToolUnionParam]", tools) if tools else openai.omit,
            stream=True,
            stream_options=usage if s.include_usage else openai.omit,
            temperature=s.temperature if s.temperature is not None else openai.omit,
            top_p=s.top_p if s.top_p is not None else openai.omit,
            max_tokens=s.max_tokens if s.max_tokens is not None else openai.omit,
            extra_body=dict(s.extra_body) or None,
        )

    def _error(self, exc: openai.OpenAIError, *, mid_stream: bool) -> GenerationError:
        """The one place where client exceptions become player-safe errors."""
        s = self.settings
        if isinstance(exc, openai.APITimeoutError):
            if isinstance(exc.__cause__, httpx2.ConnectTimeout):
                text = f"could not connect to the model server within {s.connect_timeout_s:g} s"
            else:
                text = "the model server did not answer in time"
            return GenerationError(text, reason="timeout")
        if isinstance(exc, openai.APIConnectionError):
            if mid_stream:
                return GenerationError("the connection to the model server was cut mid-reply")
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
