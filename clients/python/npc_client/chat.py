"""`npc-chat`: talk to NPCs from a terminal.

Type a line and press Enter to say it; the reply streams in as the NPC
speaks, wrapped at word boundaries to the terminal (or `$COLUMNS`). The NPC's
greeting opens the chat; actions show where the NPC takes them, and a
question (`/yes` or `/no`) under the reply. Notices that arrive while a reply
streams (room speech, reconnects) wait below it; at the prompt they clear the
prompt line and draw it again. Ctrl-C during a reply interrupts it; Ctrl-C at
the prompt, `/quit` or end of input exits (with an action still waiting for
an answer, the first Ctrl-C asks instead). Lines typed while a reply streams
wait for it, except `/yes` and `/no` typed at a terminal, which answer the
NPC's latest action at once (piped input is handled strictly in order).

Exit codes: 0 normal exit; 1 the connection closed for good while chatting;
2 bad arguments or no token; 3 the server cannot be reached; 4 the server
refused the token (close 4500 or 4002).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from npc_client.client import VERSION, NpcClient, connect
from npc_client.connection import ConnectionState
from npc_client.errors import (
    ConnectionClosedError,
    NpcClientError,
    ProtocolError,
    ServerUnreachable,
)
from npc_client.events import Draining, Event, Presence, Said, ServerNotice, Typing
from npc_client.terminal import (
    Screen,
    dev_token,
    fetch_npcs,
    parse_context,
    start_stdin_reader,
    terminal_width,
)
from npc_client.turns import Action, Turn

EXIT_OK, EXIT_CLOSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REFUSED = 0, 1, 2, 3, 4
DEFAULT_URL = "ws://127.0.0.1:8700/ws"
IMMEDIATE = ("/yes", "/no")
HELP = """\
commands:
  TEXT                 say TEXT to the current NPC
  /npc ID              talk to another NPC
  /join ROOM           enter a room; what you say then goes to the NPC in ROOM
  /leave [ROOM]        leave a room (default: the current one)
  /context k=v ...     set game state for the NPCs (location=inn time=night ...)
  /yes, /no            answer the NPC's latest action that asks for approval
  /help                this help
  /quit                exit (also Ctrl-C at the prompt; twice if an action waits for /yes or /no)
                       Ctrl-C during a reply interrupts it"""


class Chat:
    """One interactive session."""

    def __init__(self, url: str, token: str, npc: str | None, interactive: bool) -> None:
        self.url = url
        self.token = token
        self.npc = npc
        self.room: str | None = None
        self.interactive = interactive
        self.screen = Screen(sys.stdout, terminal_width(sys.stdout))
        self.names: dict[str, str] = {}
        self.greetings: dict[str, str] = {}
        self.deferred: list[str] = []  # notices that came while a reply streamed
        self.confirm_quit = False
        self.client: NpcClient | None = None
        self.streaming: Turn | None = None
        self.interrupted = False
        self.approvals: list[Action] = []
        self.lines: asyncio.Queue[str | None] = asyncio.Queue()
        self.work: asyncio.Queue[str | None] = asyncio.Queue()
        self.quit = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        try:
            self.client = await connect(
                self.url,
                self.token,
                client_name=f"npc-chat/{VERSION}",
                on_turn=self.on_turn,
                on_event=self.on_event,
                on_state=self.on_state,
            )
        except ServerUnreachable as exc:
            return fail(
                f"cannot reach server at {self.url}: {exc.cause} — is `npc-server` running?",
                EXIT_UNREACHABLE,
            )
        except ConnectionClosedError as exc:
            if exc.code in (4500, 4002):
                return fail(f"server refused the token ({exc.code}): {exc.reason}", EXIT_REFUSED)
            return fail(f"server closed the connection ({exc.code}): {exc.reason}", EXIT_CLOSED)
        except ProtocolError as exc:
            return fail(f"{self.url} does not speak the NPC protocol: {exc}", EXIT_CLOSED)
        try:
            return await self.session(self.client)
        finally:
            await self.client.close()
            for task in self.tasks:
                task.cancel()

    async def session(self, client: NpcClient) -> int:
        loop = asyncio.get_running_loop()
        start_stdin_reader(loop, self.lines)
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGINT, self.on_sigint)
        try:
            code = await self.choose_npc()
            if code is not None:
                return code
            server = client.server
            self.screen.line(
                f"connected as {client.player} to {server.name if server else 'server'} "
                f"— talking to {self.name(self.npc)}. /help for commands."
            )
            self.show_greeting()
            return await self.until_done(client)
        finally:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signal.SIGINT)

    async def until_done(self, client: NpcClient) -> int:
        worker = asyncio.ensure_future(self.work_loop())
        dispatch = asyncio.ensure_future(self.dispatch_loop())
        closed = asyncio.ensure_future(client.wait_closed())
        quit_ = asyncio.ensure_future(self.quit.wait())
        tasks = (worker, dispatch, closed, quit_)
        await asyncio.wait({worker, closed, quit_}, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        error = client.closed_error
        if error is not None:
            return fail(f"connection closed ({error.code}): {error.reason}", EXIT_CLOSED)
        return EXIT_OK

    async def choose_npc(self) -> int | None:
        """Set `npc` (asking if need be); an exit code when there is none to talk to."""
        npcs = await asyncio.to_thread(fetch_npcs, self.url)
        self.names = {str(n["id"]): str(n.get("name") or n["id"]) for n in npcs}
        self.greetings = {str(n["id"]): str(n.get("greeting") or "") for n in npcs}
        if self.npc is not None:
            return None
        if not npcs:
            return fail("the server lists no NPCs; pass --npc ID", EXIT_USAGE)
        if not self.interactive:
            self.npc = str(npcs[0]["id"])
            return None
        for number, npc in enumerate(npcs, 1):
            self.screen.line(f"  {number}. {npc.get('name')} ({npc['id']})")
        self.screen.write("talk to [1]: ")
        answer = await self.lines.get()
        if answer is None:
            return EXIT_OK
        self.screen.at_line_start = True
        choice = answer.strip() or "1"
        by_number = {str(i): str(n["id"]) for i, n in enumerate(npcs, 1)}
        self.npc = by_number.get(choice, choice)
        return None

    def name(self, npc: str | None) -> str:
        return self.names.get(npc or "", npc or "?")

    def show_greeting(self) -> None:
        """The NPC's greeting (from GET /npcs), as the page shows it, so a chat opens with it."""
        greeting = self.greetings.get(self.npc or "")
        if greeting and self.client is not None:
            text = greeting.replace("{player}", self.client.player or "traveller")
            self.screen.line(f"{self.name(self.npc)}: {text}")

    def notice(self, text: str) -> None:
        """A line for the user; held back while a reply streams, so the reply stays whole."""
        if self.streaming is not None:
            self.deferred.append(text)
        else:
            self.screen.line(text)

    # --- input ------------------------------------------------------------

    async def dispatch_loop(self) -> None:
        """Answers /yes and /no at once; queues everything else in order."""
        while True:
            line = await self.lines.get()
            word = (line or "").strip().split(" ", 1)[0]
            if word in IMMEDIATE and self.interactive:
                await self.answer(word == "/yes")
            else:
                await self.work.put(line)
            if line is None:
                return

    async def work_loop(self) -> None:
        while True:
            if self.interactive:
                self.screen.show_prompt("> ")
            line = await self.work.get()
            if line is None:
                return
            self.screen.prompt_answered()  # the user's Enter ended the prompt line
            self.confirm_quit = False
            line = line.strip()
            if line in ("/quit", "/exit"):
                return
            if line:
                await self.handle(line)

    async def handle(self, line: str) -> None:
        assert self.client is not None
        command, _, rest = line.partition(" ")
        try:
            if not line.startswith("/"):
                await self.say(line)
            elif command in IMMEDIATE:
                await self.answer(command == "/yes")
            elif command == "/help":
                self.screen.line(HELP)
            elif command == "/npc" and rest.strip():
                self.npc = rest.strip()
                self.screen.line(f"[talking to {self.name(self.npc)}]")
                self.show_greeting()
            elif command == "/join" and rest.strip():
                await self.client.join(rest.strip())
                self.room = rest.strip()
                self.screen.line(f"[joined {self.room}; you now speak there]")
            elif command == "/leave":
                room = rest.strip() or self.room
                if room is None:
                    self.screen.line("[you are in no room]")
                    return
                await self.client.leave(room)
                self.room = None if room == self.room else self.room
                self.screen.line(f"[left {room}]")
            elif command == "/context":
                await self.client.context(parse_context(rest.split()))
                self.screen.line("[context set]")
            else:
                self.screen.line(f"[unknown command {command}; /help lists them]")
        except (NpcClientError, ValueError, TimeoutError) as exc:
            self.screen.line(f"[error {exc or type(exc).__name__}]")

    async def say(self, text: str) -> None:
        assert self.client is not None
        assert self.npc is not None
        turn = await self.client.say(self.npc, text, room=self.room)
        if turn.queued:
            self.screen.line(
                f"[{self.name(self.npc)} is busy; you are number {turn.queued} in line]"
            )
        await self.stream(turn)

    async def stream(self, turn: Turn) -> None:
        self.streaming, self.interrupted = turn, False
        self.screen.begin_reply(f"{self.name(turn.npc or self.npc)}: ")
        try:
            async for item in turn:
                if isinstance(item, Action):
                    self.show_action(item)
                else:
                    self.screen.stream(item)
        finally:
            self.streaming = None
            self.screen.end_reply(self.ending(turn))
            deferred, self.deferred = self.deferred, []
            for text in deferred:
                self.screen.line(text)

    def ending(self, turn: Turn) -> str:
        if turn.reason == "interrupted" and self.interrupted:
            return f" [interrupted: the NPC remembers {turn.kept} of {turn.chars} characters]"
        if turn.reason in ("done", None):
            return ""
        detail = f": {turn.error}" if turn.error is not None else ""
        return f" [{turn.reason}{detail}]"

    def show_action(self, action: Action) -> None:
        """Inline where the NPC does it; a question to answer goes under the reply."""
        what = describe_action(action)
        if not action.approval:
            self.screen.stream(f" [{what}] ")
            return
        self.approvals.append(action)
        self.screen.stream(f" [{what}?] ")
        self.notice(f"[{self.name(self.npc)} asks: {what}? Answer /yes or /no]")
        self.spawn(self.report_status(action))

    async def report_status(self, action: Action) -> None:
        try:
            status = await action.wait()
        except ConnectionClosedError:
            return  # the chat is quitting (or closed for good, and says so)
        self.notice(f"[{describe_action(action)}: {status}]")

    async def answer(self, accept: bool) -> None:
        assert self.client is not None
        open_ = [a for a in self.approvals if a.status is None]
        if not open_:
            self.screen.line("[no action waits for an answer]")
            return
        try:
            await open_[-1].accept() if accept else await open_[-1].decline()
        except NpcClientError as exc:
            self.screen.line(f"[error {exc}]")

    def on_sigint(self) -> None:
        turn = self.streaming
        waiting = [a for a in self.approvals if a.status is None]
        if turn is not None and not turn.ended:
            self.interrupted = True
            self.spawn(turn.interrupt())
        elif waiting and not self.confirm_quit:
            self.confirm_quit = True  # quitting now would leave the NPC's question unanswered
            what = describe_action(waiting[-1])
            self.screen.line(f"[{what} waits for your answer: /yes or /no. Ctrl-C again quits]")
        else:
            self.screen.prompt = None  # leaving: no prompt to draw again
            self.screen.line("")
            self.lines.put_nowait(None)  # also ends a question such as "talk to [1]:"
            self.quit.set()

    # --- server pushes ----------------------------------------------------

    def on_turn(self, turn: Turn) -> None:
        self.spawn(self.show_other_turn(turn))

    async def show_other_turn(self, turn: Turn) -> None:
        """A turn this client did not start (another player's in a room, one the game
        caused, one from a snapshot), once it ended: its text with its actions where the
        NPC took them; an action the player may answer also asks below it."""
        parts: list[str] = []
        mine = self.client is not None and bool(turn.player) and turn.player == self.client.player
        questions: list[Action] = []
        try:
            async for item in turn:
                if not isinstance(item, Action):
                    parts.append(item)
                    continue
                what = describe_action(item)
                parts.append(f" [{what}?] " if item.approval else f" [{what}] ")
                if item.approval and mine:  # only the speaker answers (others: forbidden)
                    questions.append(item)
        except ConnectionClosedError:
            return  # closed for good: the chat says so and exits
        where = f"[{turn.room}] " if turn.room else ""
        details = []
        if turn.caused_by == "game":
            details.append(f"game event: {turn.event}" if turn.event else "game event")
        if turn.player:
            details.append(f"to {turn.player}")
        about = f" ({', '.join(details)})" if details else ""
        text = " ".join("".join(parts).split())
        self.notice(f"{where}{self.name(turn.npc)}{about}: {text}")
        for action in questions:
            if action.status is None:
                self.approvals.append(action)
                self.notice(
                    f"[{self.name(turn.npc)} asks: {describe_action(action)}? Answer /yes or /no]"
                )
                self.spawn(self.report_status(action))

    def on_state(self, state: ConnectionState) -> None:
        if state is ConnectionState.RECONNECTING:
            self.notice("[connection lost; reconnecting…]")
        elif state is ConnectionState.OPEN and self.client is not None:
            self.notice("[reconnected]")

    def on_event(self, event: Event) -> None:
        if isinstance(event, Said):
            self.notice(f"[{event.room}] {event.player} to {self.name(event.npc)}: {event.text}")
        elif isinstance(event, Presence):
            self.notice(f"[{event.room}] {event.player} {event.state}")
        elif isinstance(event, Typing) and event.on:
            self.notice(f"[{event.room or 'dm'}] {event.player} is typing…")
        elif isinstance(event, Draining):
            self.notice("[the server is restarting; reconnecting…]")
        elif isinstance(event, ServerNotice):
            self.notice(f"[error {event.error}]")

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def describe_action(action: Action) -> str:
    """An action in words: `give item (item: bread, count: 1)`."""
    name = action.name.replace("_", " ")
    args = ", ".join(
        f"{key.replace('_', ' ')}: {value if isinstance(value, str | int | float) else json.dumps(value)}"
        for key, value in action.args.items()
    )
    return f"{name} ({args})" if args else name


def fail(message: str, code: int) -> int:
    print(f"npc-chat: {message}", file=sys.stderr, flush=True)
    return code


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npc-chat", description="Talk to NPCs of an npc-server.")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"WebSocket URL (default {DEFAULT_URL})")
    parser.add_argument("--token", help="player token (default: $NPC_TOKEN)")
    parser.add_argument("--player", help="make a development token for this player")
    parser.add_argument("--npc", help="NPC id to talk to (default: choose from the server's list)")
    parser.add_argument("--version", action="version", version=f"npc-chat {VERSION}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    token = args.token or os.environ.get("NPC_TOKEN")
    if not token and args.player:
        token, how = dev_token(args.url, args.player)
        if token is None:
            return fail(f"no token for {args.player}: {how}", EXIT_USAGE)
    if not token:
        return fail(
            "no token: pass --token TOKEN (or set NPC_TOKEN), or --player NAME for a development "
            "token; `npc-server token NAME` prints one",
            EXIT_USAGE,
        )
    chat = Chat(args.url, token, args.npc, sys.stdin.isatty())
    try:
        return asyncio.run(chat.run())
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
