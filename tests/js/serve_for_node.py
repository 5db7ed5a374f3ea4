"""A real npc-server for the JavaScript client's tests (`node --test` in clients/js).

Run from the repository root: `python -m tests.js.serve_for_node [SCRIPTED_JSON]`.
It serves the demo NPCs and `scout` (whose tools the client answers: `inventory`
within 5 s, `glance` within 0.3 s) on a free loopback port (fast scripted pace,
the test secret, the server API on with `api_key`), prints one JSON line
`{"url", "http", "api_key"}`, then answers commands, one JSON object a line on
stdin, with one JSON line each on stdout:

  {"op": "token", "player": P, "ttl": S}        -> {"token": T}
  {"op": "watch", "turn": ID}                   -> {"ok": true}   (keep the server's turn)
  {"op": "text", "turn": ID}                    -> {"text": ..., "done": bool}
  {"op": "close", "code": C, "player": P}       -> {"closed": n}  (the server closes P's sockets)
  {"op": "end_sessions", "player": P}           -> {"ended": n}   (a resume then fails)
  {"op": "stats"}                               -> {"sessions": n, "sockets": n}
  {"op": "room_gap", "room": R}                 -> {"ok": true}   (R's members get room.gap,
                                                   as a cluster node sends after an outage)

End of stdin stops the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from typing import Any

from npc_server.npcs import load_npcs
from npc_server.protocol.codes import CloseCode
from npc_server.protocol.frames import RoomGap
from npc_server.transports.websocket import WebSocketEdge
from npc_server.turns import Turn
from tests.support.game_server import API_KEY
from tests.support.scout import scout
from tests.support.server import DEMO_NPCS, RunningServer, running_server, server_config

LONG = {"tokens_per_second": 150, "long_reply_chars": 800}
# An NPC that asks the speaker's client (docs/game-server.md, "Tools").
SCOUT = scout(inventory_s=5, glance_s=0.3)


class Commands:
    """What the Node tests may ask of the server."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.watched: dict[str, Turn] = {}

    def run(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command.get("op")
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            return {"error": f"unknown op {op!r}"}
        result: dict[str, Any] = handler(command)
        return result

    def op_token(self, command: dict[str, Any]) -> dict[str, Any]:
        return {"token": self.server.token(str(command["player"]), float(command.get("ttl", 3600)))}

    def op_watch(self, command: dict[str, Any]) -> dict[str, Any]:
        entry = self.server.node.turns.get(str(command["turn"]))
        if entry is None:
            return {"error": "no such turn"}
        self.watched[str(command["turn"])] = entry[1]
        return {"ok": True}

    def op_text(self, command: dict[str, Any]) -> dict[str, Any]:
        turn = self.watched[str(command["turn"])]
        return {"text": turn.text, "done": self.server.node.turns.get(turn.id) is None}

    def _edges(self, player: str | None) -> list[WebSocketEdge]:
        edges = [e for e in self.server.node.sockets if isinstance(e, WebSocketEdge)]
        return [e for e in edges if player is None or (e.session and e.session.player == player)]

    def op_close(self, command: dict[str, Any]) -> dict[str, Any]:
        edges = self._edges(command.get("player"))
        for edge in edges:
            edge.request_close(CloseCode(int(command["code"])), "the test closes the socket")
        return {"closed": len(edges)}

    def op_end_sessions(self, command: dict[str, Any]) -> dict[str, Any]:
        player = command.get("player")
        sessions = [s for s in self.server.node.hub.all_sessions() if s.player == player]
        for session in sessions:
            self.server.node.end_session(session)
        return {"ended": len(sessions)}

    def op_room_gap(self, command: dict[str, Any]) -> dict[str, Any]:
        room = str(command["room"])
        self.server.node.hub.send_to_room(room, RoomGap(room))
        return {"ok": True}

    def op_stats(self, command: dict[str, Any]) -> dict[str, Any]:
        return {
            "sessions": len(self.server.node.hub.all_sessions()),
            "sockets": len(self._edges(None)),
        }


async def serve(scripted: dict[str, Any]) -> None:
    config = dataclasses.replace(server_config(scripted=scripted), api_key=API_KEY)
    npcs = {**load_npcs(DEMO_NPCS), "scout": SCOUT}
    async with running_server(config, npcs=npcs) as server:
        commands = Commands(server)
        address = {"url": server.url, "http": server.http_url, "api_key": API_KEY}
        print(json.dumps(address), flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            try:
                answer = commands.run(json.loads(line))
            except Exception as exc:  # a bad command must not stop the server under test
                answer = {"error": repr(exc)}
            print(json.dumps(answer), flush=True)


def main() -> None:
    scripted = {**LONG, **(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})}
    asyncio.run(serve(scripted))


if __name__ == "__main__":
    main()
