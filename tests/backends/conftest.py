"""Fixtures of the backend tests: the stub model server and backends pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from npc_server.backends.openai import OpenAIBackend
from npc_server.npcs import NpcConfig

from .openai_stub import OpenAIStub
from .openai_support import NPC, MakeBackend, Reading


@pytest.fixture
async def stub() -> AsyncIterator[OpenAIStub]:
    async with OpenAIStub() as server:
        yield server


@pytest.fixture
async def make_backend(stub: OpenAIStub) -> AsyncIterator[MakeBackend]:
    backends: list[OpenAIBackend] = []

    def make(
        sleeps: list[float] | None = None, npc: NpcConfig = NPC, **settings: Any
    ) -> OpenAIBackend:
        async def fake_sleep(delay: float) -> None:
            if sleeps is not None:
                sleeps.append(delay)

        merged = {"base_url": stub.base_url, "model": "npc-model", "retries": 0, **settings}
        backend = OpenAIBackend(npc, merged, sleep=fake_sleep)
        backends.append(backend)
        return backend

    yield make
    for backend in backends:
        await backend.aclose()


@pytest.fixture(params=["generate", "deliver"])
def reading(request: pytest.FixtureRequest) -> Iterator[str]:
    """`collect` reads each turn through `generate()` or through `deliver()`."""
    Reading.mode = request.param
    yield request.param
    Reading.mode = "generate"
