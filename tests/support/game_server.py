"""A real game server for tests: a Quart app served by Hypercorn on a loopback port.

It plays the game's own backend: it receives action webhooks at `/events`
and tool calls at `/tools/<name>`, records each request as it arrived
(headers and raw body, so tests verify signatures as a game would), and
answers as the test scripts it: a status, a JSON body, late, or a hang.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from quart import Quart, Response, request

from npc_server.game_http import SIGNATURE_HEADER, verify_signature

WEBHOOK_SECRET = "test-webhook-secret"
API_KEY = "test-api-key-0123456789"


@dataclass(frozen=True)
class Received:
    """One request as the game server got it."""

    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    def signed_by(self, secret: str, now: float) -> bool:
        """Whether the signature header checks out, as a game server checks it."""
        return verify_signature(
            secret, self.headers.get(SIGNATURE_HEADER.lower(), ""), self.body, now
        )


@dataclass(frozen=True)
class Answer:
    """How to answer one request: a status and JSON body (after `delay` seconds: a slow
    game server), or hang until cancelled."""

    status: int = 200
    body: Any = field(default_factory=lambda: {"ok": True})  # bytes: sent as they are
    hang: bool = False
    delay: float = 0.0


ToolHandler = Callable[[dict[str, Any]], Answer]


@dataclass
class GameServer:
    """What the game server saw, and how it will answer."""

    host: str = "127.0.0.1"
    port: int = 0
    events: list[Received] = field(default_factory=list)
    tool_calls: list[Received] = field(default_factory=list)
    event_answers: deque[Answer] = field(default_factory=deque)
    tools: dict[str, ToolHandler] = field(default_factory=dict)
    hanging: int = 0  # requests being held open right now
    released: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def answer_events(self, *answers: Answer) -> None:
        """Queue answers for the next webhook deliveries; then 200 again."""
        self.event_answers.extend(answers)

    def app(self) -> Quart:
        app = Quart("test-game-server")

        @app.post("/events")
        async def events() -> Response:
            self.events.append(await _received())
            answer = self.event_answers.popleft() if self.event_answers else Answer()
            return await self._answer(answer)

        @app.post("/tools/<name>")
        async def tools(name: str) -> Response:
            received = await _received()
            self.tool_calls.append(received)
            handler = self.tools.get(name)
            if handler is None:
                return await self._answer(Answer(404, {"error": f"no tool {name}"}))
            return await self._answer(handler(received.json))

        return app

    async def _answer(self, answer: Answer) -> Response:
        if answer.hang:
            self.hanging += 1
            try:
                await self.released.wait()  # until the test ends or the client leaves
            finally:
                self.hanging -= 1
        if answer.delay:
            await asyncio.sleep(answer.delay)  # the game server is slow, not the test waiting
        body = answer.body if isinstance(answer.body, bytes) else orjson.dumps(answer.body)
        return Response(body, answer.status, content_type="application/json")


async def _received() -> Received:
    body = await request.get_data(as_text=False)
    assert isinstance(body, bytes)
    headers = {k.lower(): v for k, v in request.headers.items()}
    return Received(request.path, headers, body)


def listening_socket() -> socket.socket:
    """A socket listening on a free loopback port (its port is known before serving)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@asynccontextmanager
async def serving(app: Quart, sock: socket.socket | None = None) -> AsyncIterator[int]:
    """Hypercorn serving `app` on `sock` (or a free loopback port) in this loop; yields the port."""
    sock = sock or listening_socket()
    config = HypercornConfig()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.graceful_timeout = 0.5
    stop = asyncio.Event()
    task = asyncio.create_task(hypercorn_serve(app, config, shutdown_trigger=stop.wait))
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        sock.detach()  # Hypercorn closed the descriptor it was given


@asynccontextmanager
async def running_game_server() -> AsyncIterator[GameServer]:
    """The test game server on a free loopback port, in this event loop."""
    game = GameServer()
    try:
        async with serving(game.app()) as port:
            game.port = port
            yield game
            game.released.set()  # let held requests end before the server stops
    finally:
        game.released.set()
