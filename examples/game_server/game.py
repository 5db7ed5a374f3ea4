"""A small game server beside npc-server: the authoritative side of the game.

It owns each player's gold and inventory, and:

- logs players in: sets their trusted game state (`POST /api/context`) and
  gets them a token (`POST /api/tokens`), so the signing secret stays with
  npc-server;
- answers the merchant's `check_purse` tool (`POST /tools/check_purse`) from
  its own data, once the signature checks out and the signed body names that
  tool (`"tool": "check_purse"`: the signature does not cover the path);
- receives the action webhooks (`POST /events`), checks each signature (and
  that the body is an action event) and applies each event once: `give_item`
  hands the item over, an accepted `open_shop` sells the player a potion;
- makes the guard shout when a player steals (`POST /api/say`).

Run it (see docs/game-server.md):

    GAME_API_KEY=... GAME_WEBHOOK_SECRET=... python examples/game_server/game.py

Needs Quart (installed with npc-server) and httpx (`.venv/bin/pip install httpx`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from quart import Quart, Response, jsonify, request

POTION_SILVER = 12
SILVER_PER_GOLD = 10
SIGNATURE_TOLERANCE_S = 300


@dataclass
class Player:
    gold: int = 42
    silver: int = 0
    inventory: list[str] = field(default_factory=list)


def signature_ok(secret: str, header: str, body: bytes, now: float) -> bool:
    """Check `X-NPC-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    fields = dict(part.partition("=")[::2] for part in header.split(","))
    try:
        timestamp = int(fields.get("t", ""))
    except ValueError:
        return False
    if abs(now - timestamp) > SIGNATURE_TOLERANCE_S:
        return False  # an old request replayed
    signed = f"{timestamp}.".encode() + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    # As bytes: compare_digest refuses str that is not ASCII (a TypeError, not False).
    return hmac.compare_digest(expected.encode(), fields.get("v1", "").encode())


def create_game(npc_url: str, api_key: str, webhook_secret: str) -> Quart:
    """The game server's app; `npc_url` is npc-server's HTTP address."""
    app = Quart(__name__)
    players: dict[str, Player] = {}
    applied: set[str] = set()  # idempotency keys of the events already applied
    api = {"Authorization": f"Bearer {api_key}"}

    async def post_api(path: str, body: dict[str, Any]) -> httpx.Response:
        async with httpx.AsyncClient(base_url=npc_url, headers=api, timeout=5) as http:
            return await http.post(path, json=body)

    async def call_api(path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = await post_api(path, body)
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    async def signed_body() -> bytes | None:
        body = await request.get_data(as_text=False)
        header = request.headers.get("X-NPC-Signature", "")
        if not isinstance(body, bytes) or not signature_ok(
            webhook_secret, header, body, time.time()
        ):
            return None
        return body

    @app.post("/login")
    async def login() -> Response:
        name = (await request.get_json())["player"]
        player = players.setdefault(name, Player())
        # The game's word on the player's state: wins over what the client claims.
        state = {"gold": player.gold, "inventory": ", ".join(player.inventory) or "nothing"}
        await call_api("/api/context", {"player": name, "data": state})
        token = await call_api("/api/tokens", {"player": name, "ttl": 3600})
        return jsonify({"token": token["token"], "ws": npc_url.replace("http", "ws", 1) + "/ws"})

    @app.post("/tools/check_purse")
    async def check_purse() -> Response | tuple[str, int]:
        body = await signed_body()
        if body is None:
            return "bad signature", 401
        call = json.loads(body)
        # The signature covers the body, not the path: a call signed for another tool
        # (replayed here within the tolerance) must not be answered as this one.
        if call.get("tool") != "check_purse":
            return "signed for another tool", 400
        player = players.get(call["player"], Player())
        return jsonify({"result": {"gold": player.gold}})

    @app.post("/events")
    async def events() -> Response | tuple[str, int]:
        body = await signed_body()
        if body is None:
            return "bad signature", 401
        event = json.loads(body)
        if event.get("type") != "action":  # e.g. a signed tool call replayed here
            return "not an action event", 400
        if event["id"] not in applied:  # a retry of an event already applied is a no-op
            applied.add(event["id"])
            # Who answered an approval gets it (in a room turn the game started
            # `player` is ""); for the other events, the turn's player.
            who = event.get("answered_by") or event["player"]
            apply(players.setdefault(who, Player()), event)
        return jsonify({"ok": True})

    @app.post("/steal")
    async def steal() -> tuple[Response, int]:
        name = (await request.get_json())["player"]
        said = await post_api(
            "/api/say",
            {"npc": "guard", "player": name, "event": "theft", "text": f"{name} stole an apple"},
        )
        # npc-server's answer as it is: the turn, or why not (409 when alice is offline).
        # (An example: npc-server unreachable, or an answer that is not JSON, is a 500.)
        return jsonify(said.json()), said.status_code

    @app.get("/players/<name>")
    async def show(name: str) -> Response:
        return jsonify(asdict(players.get(name, Player())))

    return app


def apply(player: Player, event: dict[str, Any]) -> None:
    """The effect of one action event on the game's own state."""
    action = event["action"]
    if action["name"] == "give_item" and event["event"] == "done":
        player.inventory.append(str(action["args"].get("item", "something")))
    elif action["name"] == "open_shop" and event["event"] == "accepted":
        # The player said yes to the shop: the game sells a potion, if they can pay.
        purse = player.gold * SILVER_PER_GOLD + player.silver
        if purse >= POTION_SILVER:
            purse -= POTION_SILVER
            player.gold, player.silver = divmod(purse, SILVER_PER_GOLD)
            player.inventory.append("healing potion")


def main() -> int:
    missing = [n for n in ("GAME_API_KEY", "GAME_WEBHOOK_SECRET") if not os.environ.get(n)]
    if missing:
        print(
            f"game.py: set {' and '.join(missing)} (the npc-server's NPC_SERVER_API_KEY and "
            "NPC_SERVER_WEBHOOK_SECRET; see docs/game-server.md)",
            file=sys.stderr,
        )
        return 2
    game = create_game(
        os.environ.get("GAME_NPC_URL", "http://127.0.0.1:8700"),
        os.environ["GAME_API_KEY"],
        os.environ["GAME_WEBHOOK_SECRET"],
    )
    game.run(host="127.0.0.1", port=int(os.environ.get("GAME_PORT", "8800")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
