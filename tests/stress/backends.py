"""Generation backends for the stress scenarios: gated, failing, hanging, endless.

Each counts the generations it is running, so a scenario can check that
every generator was released (finished, failed or cancelled) afterwards,
and the `aclose()` calls the server makes when it shuts down.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from npc_server.backends import GenerationError, GenerationRequest, Piece, TextPiece

# Bounds for generators that run "forever": far beyond any turn_timeout in use.
ENDLESS_PIECES = 100_000


class CountingBackend:
    """Bookkeeping shared by the backends below."""

    def __init__(self) -> None:
        self.started = 0
        self.running = 0
        self.cancelled = 0
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        self.started += 1
        self.running += 1
        try:
            async for piece in self.pieces(request):
                yield piece
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1

    async def pieces(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        raise NotImplementedError
        yield TextPiece("")  # pragma: no cover - makes this an async generator


class GatedBackend(CountingBackend):
    """`before` pieces, then a wait on `gate`, then `after` pieces: the same text every turn.

    Until the scenario opens the gate every turn is certainly mid-stream.
    """

    def __init__(self, before: int, after: int, interval: float = 0.002) -> None:
        super().__init__()
        self.before = before
        self.after = after
        self.interval = interval
        self.gate = asyncio.Event()

    def words(self) -> list[str]:
        return [f"w{i} " for i in range(self.before)] + [f"v{i} " for i in range(self.after)]

    @property
    def text(self) -> str:
        return "".join(self.words())

    async def pieces(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        for index, word in enumerate(self.words()):
            if index == self.before:
                await self.gate.wait()
            await asyncio.sleep(self.interval)
            yield TextPiece(word)


class RaisingBackend(CountingBackend):
    """A few pieces, then `GenerationError` (a model server that refuses mid-stream)."""

    MESSAGE = "the model server refused to go on"

    def __init__(self, pieces_before: int = 3) -> None:
        super().__init__()
        self.pieces_before = pieces_before

    async def pieces(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        for i in range(self.pieces_before):
            await asyncio.sleep(0.001)
            yield TextPiece(f"part{i} ")
        raise GenerationError(self.MESSAGE)


class CrashingBackend(CountingBackend):
    """A few pieces, then an unexpected exception (a bug in a backend)."""

    def __init__(self, pieces_before: int = 2) -> None:
        super().__init__()
        self.pieces_before = pieces_before

    async def pieces(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        for i in range(self.pieces_before):
            await asyncio.sleep(0.001)
            yield TextPiece(f"bit{i} ")
        raise RuntimeError("backend bug for the stress test")


class HangingBackend(CountingBackend):
    """One piece, then waits forever (an upstream that stopped answering)."""

    async def pieces(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        yield TextPiece("Well... ")
        await asyncio.Event().wait()


class EndlessBackend(CountingBackend):
    """Streams a piece every `interval` (bounded far past any turn timeout)."""

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__()
        self.interval = interval

    async def pieces(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        for i in range(ENDLESS_PIECES):
            await asyncio.sleep(self.interval)
            yield TextPiece(f"la{i % 10} ")


class ChattyBackend(CountingBackend):
    """Long replies in big pieces: many bytes for few frames (fills a stalled socket fast)."""

    def __init__(self, pieces: int = 300, piece_chars: int = 256, interval: float = 0.005) -> None:
        super().__init__()
        self.count = pieces
        self.piece = ("la " * piece_chars)[:piece_chars]
        self.interval = interval

    async def pieces(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        for _ in range(self.count):
            await asyncio.sleep(self.interval)
            yield TextPiece(self.piece)
