"""Chat-completion stream chunks (parsed JSON objects) to pieces; no I/O.

The chunks are the plain dicts orjson returns, not SDK models: building a
pydantic object per chunk cost ten times the rest of the relay path. Every
field read is type-checked, so a chunk of the wrong shape is a
`MalformedChunk`, never an AttributeError deep in a turn.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from npc_server.backends.base import (
    ActionPiece,
    GenerationError,
    Piece,
    TextPiece,
    ToolCallPiece,
    UsagePiece,
)
from npc_server.logs import sparse
from npc_server.npcs import NpcConfig
from npc_server.protocol.codec import MAX_DEPTH, nesting

log = logging.getLogger(__name__)

UNFINISHED = "the model server ended the reply without finishing it"
MAX_ARGS_DEPTH = MAX_DEPTH - 2  # a call's arguments, in the frame that carries them


class MalformedChunk(ValueError):
    """A chunk whose JSON is valid but whose shape is not a chat-completion chunk."""


@dataclass(slots=True)
class _PendingCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


def _typed(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """`value` if it is None or of `kind`; otherwise the chunk is malformed."""
    if value is None or isinstance(value, kind):
        return value
    raise MalformedChunk(f"{what} is {type(value).__name__}")


class StreamAssembler:
    """Turns chat-completion chunks into pieces, fed one chunk at a time.

    Tool-call argument fragments are gathered per `index`; a call is complete
    when another call or text starts, or when `finish_reason` arrives, and is
    emitted there, so its offset is the text streamed before it. Only the
    first choice counts; a model's streamed reasoning (`reasoning_content`,
    `reasoning`) is not shown but counts as its first token.
    """

    def __init__(self, npc: NpcConfig, skipped: dict[str, int] | None = None) -> None:
        self._npc = npc
        # Calls of the model skipped so far, by message: shared by the streams of one
        # backend, so a model that keeps calling what the NPC does not have is logged
        # the 1st, 2nd, 4th, 8th ... time, not once a call.
        self._skipped = {} if skipped is None else skipped
        self._pending: dict[int, _PendingCall] = {}
        self.started = False  # a token (text, tool call or reasoning) has arrived
        self.finished = False  # a finish_reason has arrived
        self.usage: UsagePiece | None = None

    def feed(self, chunk: dict[str, Any]) -> list[Piece]:
        """The pieces this chunk completes; raise `MalformedChunk` on a wrong shape."""
        choices = chunk.get("choices")
        if type(choices) is list and len(choices) == 1 and not self._pending:
            # The common chunk: one choice whose delta is only text, nothing finished.
            choice = choices[0]
            delta = choice.get("delta") if type(choice) is dict else None
            if type(delta) is dict and len(delta) == 1:
                content = delta.get("content")
                if (
                    type(content) is str
                    and content
                    and choice.get("finish_reason") is None
                    and chunk.get("usage") is None
                ):
                    self.started = True
                    return [TextPiece(content)]
        pieces: list[Piece] = []
        choices = _typed(chunk.get("choices"), list, "choices")
        if choices:
            choice = _typed(choices[0], dict, "a choice") or {}
            self._feed_delta(_typed(choice.get("delta"), dict, "delta") or {}, pieces)
            if choice.get("finish_reason") is not None:
                self.finished = True
                if self._pending:
                    pieces += self.flush()
        usage = chunk.get("usage")
        if usage is not None:
            self._read_usage(_typed(usage, dict, "usage"))
        return pieces

    def end(self) -> list[Piece]:
        """The reply's pending tool calls once its stream is over; `GenerationError` if
        no `finish_reason` came (usage is read from `usage`)."""
        if not self.finished:
            raise GenerationError(UNFINISHED)
        return self.flush()

    def flush(self) -> list[Piece]:
        """Emit every pending tool call, in index order."""
        if not self._pending:
            return []
        pieces = [self._action(call) for _, call in sorted(self._pending.items())]
        self._pending.clear()
        return [p for p in pieces if p is not None]

    def _feed_delta(self, delta: dict[str, Any], pieces: list[Piece]) -> None:
        content = delta.get("content")
        if content:
            self.started = True
            if self._pending:
                pieces += self.flush()
            pieces.append(TextPiece(_typed(content, str, "content")))
        calls = _typed(delta.get("tool_calls"), list, "tool_calls")
        for call in calls or ():
            self.started = True
            pieces += self._add_call_fragment(_typed(call, dict, "a tool call") or {})
        if delta.get("reasoning_content") or delta.get("reasoning"):
            self.started = True

    def _read_usage(self, usage: dict[str, Any]) -> None:
        prompt = _typed(usage.get("prompt_tokens"), int, "prompt_tokens")
        completion = _typed(usage.get("completion_tokens"), int, "completion_tokens")
        self.usage = UsagePiece(prompt or 0, completion or 0)

    def _add_call_fragment(self, call: dict[str, Any]) -> list[Piece]:
        call_id = _typed(call.get("id"), str, "a tool call id")
        function = _typed(call.get("function"), dict, "a tool call function")
        index = self._index_of(_typed(call.get("index"), int, "a tool call index"), call_id)
        pieces: list[Piece] = []
        if index not in self._pending:
            pieces = self.flush()  # a new call starts: the previous one is complete
            self._pending[index] = _PendingCall(id=call_id or "")
        pending = self._pending[index]
        if function is not None:
            name = _typed(function.get("name"), str, "a tool name")
            arguments = _typed(function.get("arguments"), str, "tool arguments")
            pending.name = pending.name or name or ""
            pending.arguments.append(arguments or "")
        return pieces

    def _index_of(self, index: int | None, call_id: str | None) -> int:
        if index is not None:
            return index
        # Some servers omit `index`: a new call id then means a new call.
        last = max(self._pending, default=-1)
        if last < 0 or (call_id and call_id != self._pending[last].id):
            return last + 1
        return last

    def _skip(self, message: str, *args: object) -> None:
        count = self._skipped[message] = self._skipped.get(message, 0) + 1
        if sparse(count):
            log.warning(message + " (%d so far)", *args, count)

    def _action(self, call: _PendingCall) -> ActionPiece | ToolCallPiece | None:
        is_tool = self._npc.tool(call.name) is not None
        if not is_tool and self._npc.action(call.name) is None:
            self._skip("NPC %r: model called unknown action %r; skipped", self._npc.id, call.name)
            return None
        text = "".join(call.arguments).strip() or "{}"
        try:
            args = json.loads(text)
        except (ValueError, RecursionError):  # nested past Python's stack: not arguments
            args = None
        # Deeper than a client's frame may nest (the action frame adds two levels):
        # clients and other nodes would refuse the frame that carries it.
        if isinstance(args, dict) and nesting(args) > MAX_ARGS_DEPTH:
            args = None
        if not isinstance(args, dict):
            self._skip(
                "NPC %r: action %r has unparseable arguments; skipped", self._npc.id, call.name
            )
            return None
        if is_tool:  # a question for the game or the client: the reply waits for it
            return ToolCallPiece(call.name, args, call.id or f"call_{call.name}")
        return ActionPiece(call.name, args)
