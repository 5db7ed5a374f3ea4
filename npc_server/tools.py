"""Tool calls: the NPC asks the game server or the speaker's client, mid-reply.

A backend yields a `ToolCallPiece`; the turn runner hands it to `ToolRouter.run_call`,
which tells the audience (`tool{turn, call, name, args, answered_by}`), asks
whoever answers the tool, and ends the call with `tool.end{call, status}`:

- `answered_by = "game"`: a POST to `{[game] url}/tools/<name>` with
  `{tool, turn, call, npc, player, room, args}`, signed like the webhooks, answered
  with JSON `{"result": ...}`. The signature covers the body, not the path: `tool`
  names the tool in the signed bytes, so a game server checks it against the path
  (a call signed for `check_purse` must not pass at `/tools/give_gold`), and the
  name goes into the path as one percent-encoded segment. Without a game URL the
  call ends in `error` at once, which the scripted backend answers with its
  documented fallback.
- `answered_by = "client"`: the turn's speaker answers with `tool.result{call, result}`.

Each call has its tool's `timeout_s` (default `[game] tool_timeout_s`). An
interrupt cancels the turn's task, and with it the wait and any request in
flight; the turn runner then ends the call as `cancelled`. The answer, as
JSON text cut to `[game] tool_result_chars`, is what the model sees and
what the NPC's memory keeps.

A call that does not answer is counted by reason (`statistics().failures`,
`/metrics`); an unknown tool and a game server's failures are also logged at
WARNING, the 1st, 2nd, 4th, 8th ... time of each reason: a model that keeps
calling a tool that is not there, or a game server that is down, must not
write a line per call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from npc_server.backends.base import MemoryEntry, ToolCallPiece
from npc_server.game_http import SIGNATURE_HEADER, GameHttpError, post_json, signature
from npc_server.logs import sparse
from npc_server.npcs import AnsweredBy, ToolSpec
from npc_server.protocol.codec import MAX_DEPTH, nesting
from npc_server.protocol.frames import Tool, ToolEnd
from npc_server.settings import GameSection
from npc_server.turns import Conversation, Turn, TurnState
from npc_server.webhooks import Post

log = logging.getLogger(__name__)

ANSWERED = "answered"
TIMEOUT = "timeout"
ERROR = "error"
MAX_RESULT_DEPTH = MAX_DEPTH  # a game server's tool result (a client's: MAX_CONTEXT_DEPTH)
CUT_MARK = "…"
# Why a call did not answer: each is counted; UNKNOWN_TOOL to TOO_DEEP also logged.
UNKNOWN_TOOL = "unknown_tool"  # the backend asked for a tool the NPC does not have
GAME_FAILED = "game_failed"  # no HTTP answer from the game server
BAD_ANSWER = "bad_answer"  # an answer that is not 2xx JSON with `result`
TOO_DEEP = "too_deep"  # a result nested deeper than MAX_RESULT_DEPTH
NO_GAME_URL = "no_game_url"  # a game tool without `[game] url`: the NPC's fallback
NO_SPEAKER = "no_speaker"  # a client tool in a game-caused room turn
FAILURE_REASONS = (
    UNKNOWN_TOOL,
    GAME_FAILED,
    BAD_ANSWER,
    TOO_DEEP,
    NO_GAME_URL,
    NO_SPEAKER,
    TIMEOUT,
)


@dataclass(frozen=True, slots=True)
class ToolQuestion:
    """One call, as the game server receives it."""

    call: str
    name: str
    args: Mapping[str, Any]
    turn: str
    npc: str
    player: str
    room: str | None

    def body(self) -> bytes:
        # `tool` is signed with the rest: the signature does not cover the path, so the
        # game server compares it with the path's name (a replay to another tool fails).
        return orjson.dumps(
            {
                "tool": self.name,
                "turn": self.turn,
                "call": self.call,
                "npc": self.npc,
                "player": self.player,
                "room": self.room,
                "args": dict(self.args),
            }
        )


@dataclass(frozen=True, slots=True)
class ToolRouterStatistics:
    pending_client_calls: int
    calls: int
    answered: int
    timeouts: int
    errors: int
    failures: Mapping[str, int]  # calls that did not answer, by reason (unknown tools too)


class ToolRouter:
    """Where each tool call goes, how long it may take, and its answer."""

    def __init__(
        self,
        settings: GameSection,
        secret: str | None,
        *,
        post: Post = post_json,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._secret = secret
        self._post = post
        self._wall_clock = wall_clock
        # call id -> (the player who may answer, the answer's future)
        self._pending: dict[str, tuple[str, asyncio.Future[Any]]] = {}
        self._counts = {"calls": 0, ANSWERED: 0, TIMEOUT: 0, ERROR: 0}
        self._failures = dict.fromkeys(FAILURE_REASONS, 0)

    async def run_call(self, conversation: Conversation, turn: Turn, piece: ToolCallPiece) -> None:
        """One call of `turn`: `tool`, the question, `tool.end`, memory; `piece.answer` set."""
        spec = conversation.npc.tool(piece.name)
        if spec is None:
            message = "NPC %s called unknown tool %r; answered error"
            self._failed(UNKNOWN_TOOL, message, turn.npc, piece.name)
            self._answer(piece, ERROR, None)
            return
        call = conversation.new_id("c")
        args = dict(piece.args)
        turn.pending_call = call
        frame = Tool(turn.id, call, spec.name, args, spec.answered_by.value)
        conversation.publisher.publish_nowait(conversation.channel, frame)
        question = ToolQuestion(call, spec.name, args, turn.id, turn.npc, turn.player, turn.room)
        status, result = await self.ask(spec, question)
        if turn.state is not TurnState.ACTIVE or turn.pending_call != call:
            return  # ended meanwhile; the turn runner said so already
        turn.pending_call = None
        self._answer(piece, status, result)
        end = ToolEnd(call, status, turn.id)
        conversation.publisher.publish_nowait(conversation.channel, end)
        line = MemoryEntry("tool", spec.name, piece.answer.content, call, _json(args))
        conversation.memory.add(line)

    async def ask(self, spec: ToolSpec, question: ToolQuestion) -> tuple[str, Any]:
        """(status, result) of one question, within the tool's timeout."""
        self._counts["calls"] += 1
        timeout = spec.timeout_s if spec.timeout_s is not None else self.settings.tool_timeout_s
        try:
            async with asyncio.timeout(timeout):
                if spec.answered_by is AnsweredBy.CLIENT:
                    status, result = await self._ask_client(question)
                else:
                    status, result = await self._ask_game(question, timeout)
        except TimeoutError:
            status, result = TIMEOUT, None
            self._failed(TIMEOUT)
        self._counts[status] += 1
        return status, result

    def answer_nowait(self, player: str, call: str, result: Any) -> bool:
        """A client's `tool.result`; False when `call` is not waiting for `player`."""
        entry = self._pending.get(call)
        if entry is None or entry[0] != player or entry[1].done():
            return False
        entry[1].set_result(result)
        return True

    def statistics(self) -> ToolRouterStatistics:
        c = self._counts
        return ToolRouterStatistics(
            len(self._pending), c["calls"], c[ANSWERED], c[TIMEOUT], c[ERROR], dict(self._failures)
        )

    async def _ask_client(self, question: ToolQuestion) -> tuple[str, Any]:
        if not question.player:  # a game-caused room turn has no speaker to ask
            self._failed(NO_SPEAKER)
            return ERROR, None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[question.call] = (question.player, future)
        try:
            return ANSWERED, await future
        finally:
            del self._pending[question.call]

    async def _ask_game(self, question: ToolQuestion, limit_s: float) -> tuple[str, Any]:
        if not self.settings.url:
            self._failed(NO_GAME_URL)
            return ERROR, None
        # One path segment whatever the name holds (a name of the OpenAI rule is unchanged).
        url = f"{self.settings.url}/tools/{quote(question.name, safe='')}"
        body = question.body()
        headers = {"Idempotency-Key": question.call}
        if self._secret:
            headers[SIGNATURE_HEADER] = signature(self._secret, body, int(self._wall_clock()))
        try:
            # The client's own timeout is a backstop: ask()'s bound says "timeout" first.
            answer = await self._post(url, body, headers, limit_s + 1.0)
        except GameHttpError as exc:
            message = "tool %s for %s: the game server failed: %s"
            self._failed(GAME_FAILED, message, question.name, question.turn, exc)
            return ERROR, None
        return self._read_answer(question, answer.status, answer.body)

    def _read_answer(self, question: ToolQuestion, status: int, body: bytes) -> tuple[str, Any]:
        try:
            doc = orjson.loads(body) if 200 <= status < 300 else None
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict) or "result" not in doc:
            message = "tool %s for %s: the game server answered HTTP %d without a JSON {result}"
            self._failed(BAD_ANSWER, message, question.name, question.turn, status)
            return ERROR, None
        if nesting(doc["result"]) > MAX_RESULT_DEPTH:  # no frame or model request holds it
            message = "tool %s for %s: the game server's result nests deeper than %d levels"
            self._failed(TOO_DEEP, message, question.name, question.turn, MAX_RESULT_DEPTH)
            return ERROR, None
        return ANSWERED, doc["result"]

    def _failed(self, reason: str, message: str = "", *args: object) -> None:
        """Count a call that did not answer; log `message % args` with the count, at
        WARNING, the 1st, 2nd, 4th, 8th ... time of `reason` (none without a message)."""
        self._failures[reason] += 1
        count = self._failures[reason]
        if message and sparse(count):
            log.warning(message + " (%d so far for this reason)", *args, count)

    def _answer(self, piece: ToolCallPiece, status: str, result: Any) -> None:
        answer = piece.answer
        answer.status, answer.result = status, result if status == ANSWERED else None
        if status == ANSWERED:
            answer.content = self._bounded(_json(result))
        else:
            answer.content = _json({"error": f"the tool's answer is missing: {status}"})

    def _bounded(self, text: str) -> str:
        limit = self.settings.tool_result_chars
        return text if len(text) <= limit else text[: limit - len(CUT_MARK)] + CUT_MARK


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()
