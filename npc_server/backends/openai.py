"""Backend for OpenAI-compatible chat-completion servers (vLLM, llama.cpp, Ollama, ...).

The request is the one the `openai` SDK sends (its URL and headers, the
`Authorization` among them, built once per backend by the SDK; the JSON body
by orjson), but it goes out on the backend's own keep-alive pool of plain
asyncio connections (http_pool.py), and the body is read below any HTTP
library: `SSEDecoder` splits the bytes into events, orjson parses each,
`StreamAssembler` turns the dicts into pieces. Through the SDK and httpx the
request and the reads cost several times the rest of the relay path. The
backend adds:

- first token / idle between chunks / total: one lazily re-armed `Deadline`
  timer per turn, armed only while a read is awaited (never across a yield);
- retries only while opening the stream, so no piece is ever sent twice;
- cancellation or any failure closes the HTTP response in `finally`, so the
  model server sees the disconnect and stops generating.

Settings are documented in docs/backends.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx2
import orjson
from openai import AsyncOpenAI
from openai._models import FinalRequestOptions

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
from npc_server.backends.http1 import request_prefix, with_length
from npc_server.backends.http_pool import (
    BodyCut,
    ConnectFailed,
    ConnectionPool,
    ConnectTimedOut,
    Origin,
    PoolTimedOut,
    StreamResponse,
    TransportError,
)
from npc_server.backends.live_round import PAST_LAST_ROUND, LiveRound
from npc_server.backends.stream_reader import MALFORMED, EventReader, TurnLimits
from npc_server.backends.upstream_errors import UpstreamStatus, retry_delay, upstream_message
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
MAX_ERROR_BODY = 64 * 1024  # of an error response, what is read for its message
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
    (("max_connections",), int, lambda v: 1 <= v <= 100_000, "an integer in 1..100000"),
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
    max_connections: int = 1000
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
        self._skipped: dict[str, int] = {}  # the model's skipped calls, for sparse logs
        s = self.settings
        # The SDK's client builds the request head (never sends): the read timeout it
        # announces is the backstop the SDK had; the turn's deadlines bound every wait.
        timeout = httpx2.Timeout(s.connect_timeout_s, read=s.total_timeout_s)
        self._client = AsyncOpenAI(
            base_url=s.base_url, api_key=self._secret, max_retries=0, timeout=timeout
        )
        self._tools = build_tools(npc.actions, npc.tools) if s.use_tools else []
        self._prefix: bytes | None = None
        origin = Origin.parse(s.base_url)
        _warn_about_proxies(npc.id, origin)
        self._pool = ConnectionPool(
            origin,
            max_connections=s.max_connections,
            connect_timeout_s=s.connect_timeout_s,
            ssl_context=_ssl_context() if origin.scheme == "https" else None,
        )

    @property
    def pool(self) -> ConnectionPool:
        """The backend's connections to the model server."""
        return self._pool

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._pool.aclose()
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
                        log.warning(PAST_LAST_ROUND, self.npc.id)
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

    async def deliver(
        self,
        request: GenerationRequest,
        take: Callable[[Piece], None],
        finished: Callable[[], None] | None = None,
    ) -> AsyncIterator[ToolCallPiece]:
        """What `generate()` streams, each piece handed to `take` as its bytes arrive.

        The pieces are parsed in the connection's callbacks (live_round.py), so no
        task wakes per chunk; tool calls are yielded for the caller to answer, and
        the requests, rounds, limits and errors are `generate()`'s. `finished()`
        runs right after the reply's last piece (usage included), in the callback
        of the chunk that completed it.
        """
        messages = build_messages(request, self.settings.max_prompt_chars)
        usage: list[UsagePiece] = []  # each round's, once reported

        for round_ in range(MAX_TOOL_ROUNDS + 1):
            assembler = StreamAssembler(self.npc, self._skipped)

            def last(assembler: StreamAssembler = assembler) -> None:
                if assembler.usage is not None:
                    usage.append(assembler.usage)
                if usage:
                    take(_summed(usage))
                if finished is not None:
                    finished()

            limits = TurnLimits(self.settings)
            deadline = Deadline()
            response: StreamResponse | None = None
            live: LiveRound | None = None
            try:
                response = await self._open(messages, limits, deadline)
                live = LiveRound(
                    response,
                    limits,
                    assembler,
                    partial(self._feed, assembler),
                    take,
                    last,
                    calls_allowed=round_ < MAX_TOOL_ROUNDS,
                    npc_id=self.npc.id,
                )
                while (call := await live.next_call()) is not None:
                    yield call
                    live.resume()
            finally:
                deadline.close()
                if live is not None:
                    live.close()
                if response is not None:
                    response.close()
            if not live.calls:
                return
            if assembler.usage is not None:
                usage.append(assembler.usage)
            messages = [*messages, *tool_round("".join(live.said), live.calls)]

    async def _round(self, messages: list[Message]) -> AsyncIterator[Piece]:
        """One completion request and its stream."""
        limits = TurnLimits(self.settings)
        deadline = Deadline()
        response: StreamResponse | None = None
        try:
            response = await self._open(messages, limits, deadline)
            reader = EventReader(response, limits, deadline)
            assembler = StreamAssembler(self.npc, self._skipped)
            while (payloads := await reader.next_events(assembler.started)) is not None:
                for payload in payloads:
                    for piece in self._feed(assembler, payload):
                        yield piece
            for piece in _finish(assembler):
                yield piece
        finally:
            deadline.close()
            if response is not None:
                response.close()

    def _feed(self, assembler: StreamAssembler, payload: bytes) -> list[Piece]:
        try:
            chunk = orjson.loads(payload)
            if not isinstance(chunk, dict):
                raise MalformedChunk("a chunk is not an object")
            if error := chunk.get("error"):
                detail = self._scrub(upstream_message(error) or STREAM_ERROR)
                raise GenerationError(f"the model server reported an error: {detail}")
            return assembler.feed(chunk)
        except ValueError:  # not JSON, or not shaped like a chunk
            raise GenerationError(MALFORMED) from None

    async def _open(
        self, messages: list[Message], limits: TurnLimits, deadline: Deadline
    ) -> StreamResponse:
        """Send the request; retry connect errors, 429 and 5xx before any piece exists."""
        loop = asyncio.get_running_loop()
        s = self.settings
        request = self._request(messages)
        for attempt in range(s.retries + 1):
            limits.start_attempt()
            try:
                return await self._send(request, limits, deadline)
            except (TransportError, UpstreamStatus) as exc:
                delay = retry_delay(exc, attempt)
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

    async def _send(self, request: bytes, limits: TurnLimits, deadline: Deadline) -> StreamResponse:
        """One attempt: the response once its head is in (an error status raises)."""
        when = limits.next_wait(started=False)
        try:
            response = await deadline.wait(self._pool.request(request), when)
        except Expired:
            raise limits.expired(when) from None
        head = response.head
        if 200 <= head.status < 300:
            return response
        try:
            body = await deadline.wait(response.read_all(MAX_ERROR_BODY), when)
        except Expired:
            raise limits.expired(when) from None
        except BodyCut:
            body = b""
        finally:
            response.close()
        raise UpstreamStatus(head.status, head.reason, head.headers, body)

    def _request(self, messages: list[Message]) -> bytes:
        """The request's bytes: the SDK's head, and the body the SDK would send."""
        s = self.settings
        body: dict[str, object] = {"model": s.model, "stream": True}
        if s.include_usage:
            body["stream_options"] = {"include_usage": True}
        for key in ("temperature", "top_p", "max_tokens"):
            if (value := getattr(s, key)) is not None:
                body[key] = value
        # As the SDK merges extra_body: its keys win over the options, and the
        # prompt wins over both.
        body.update(s.extra_body)
        body["messages"] = messages
        if self._tools:
            body["tools"] = self._tools
        return with_length(self._request_prefix(), orjson.dumps(body))

    def _request_prefix(self) -> bytes:
        """The SDK's request head for a streamed chat completion, built once, in the loop.

        In the loop, because the SDK names the async library in a header.
        """
        if self._prefix is None:
            options = FinalRequestOptions.construct(
                method="post",
                url="/chat/completions",
                json_data=None,
                headers={"X-Stainless-Raw-Response": "stream"},
            )
            built = self._client._build_request(options)
            headers = [(k, v) for k, v in built.headers.raw if k.lower() != b"content-length"]
            target = built.url.raw_path.decode("ascii")
            self._prefix = request_prefix("POST", target, headers)
        return self._prefix

    def _error(self, exc: TransportError | UpstreamStatus) -> GenerationError:
        """The one place where failures to send become player-safe errors."""
        if isinstance(exc, ConnectTimedOut):
            limit = self.settings.connect_timeout_s
            text = f"could not connect to the model server within {limit:g} s"
            return GenerationError(text, reason="timeout")
        if isinstance(exc, PoolTimedOut):
            return GenerationError("the model server did not answer in time", reason="timeout")
        if isinstance(exc, UpstreamStatus):
            detail = self._scrub(upstream_message(exc.error) or exc.reason)
            return GenerationError(f"the model server answered HTTP {exc.status}: {detail}")
        if isinstance(exc, ConnectFailed):
            return GenerationError("could not reach the model server")
        return GenerationError(f"the model client failed: {type(exc).__name__}")

    def _scrub(self, text: str) -> str:
        if self._secret != DUMMY_API_KEY:
            text = text.replace(self._secret, "***")
        return text[:UPSTREAM_MESSAGE_CHARS]


def _summed(usage: list[UsagePiece]) -> UsagePiece:
    return UsagePiece(sum(u.prompt_tokens for u in usage), sum(u.completion_tokens for u in usage))


def _finish(assembler: StreamAssembler) -> list[Piece]:
    """The pieces after the last chunk: pending tool calls, then usage."""
    pieces = assembler.end()
    if assembler.usage is not None:
        pieces.append(assembler.usage)
    return pieces


def _ssl_context() -> ssl.SSLContext:
    """The TLS settings httpx would use (its CA bundle, SSL_CERT_FILE ...), HTTP/1.1 only."""
    context = httpx2.create_ssl_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


def _warn_about_proxies(npc_id: str, origin: Origin) -> None:
    """httpx honoured HTTP(S)_PROXY; this transport connects directly, so say so."""
    proxy = urllib.request.getproxies().get(origin.scheme)
    if proxy and not urllib.request.proxy_bypass(origin.host):
        log.warning(
            "NPC %r: %s_proxy is set, but the openai backend connects to %s directly",
            npc_id,
            origin.scheme,
            origin.host,
        )
