// The JavaScript client against a real npc-server (node --test).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import WebSocket from "ws";

import {
  CloseCode,
  ConnectionClosedError,
  ErrorCode,
  LOST,
  NpcError,
  PROTOCOL_VERSION,
  ServerUnreachable,
  VERSION,
  codePoints,
  connect,
} from "../src/index.js";
import {
  TestServer,
  client,
  gatedWebSocket,
  next,
  readRest,
  readUntil,
  recordingWebSocket,
  within,
} from "./harness.js";

let server;
before(async () => {
  server = await TestServer.start();
});
after(async () => {
  await server?.stop();
});

/** Say something and register the server's record of the turn. */
async function sayWatched(npc, text = "any news?", options) {
  const turn = await npc.say("merchant", text, options);
  await server.command("watch", { turn: turn.id });
  return turn;
}

/** Resolves once the server's turn has ended (polled: the server has no push for it). */
async function serverTurnDone(turn) {
  while (!(await server.command("text", { turn: turn.id })).done) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function serverText(turn) {
  return (await server.command("text", { turn: turn.id })).text;
}

/** Resolves once `condition()` holds (checked every 20 ms; wrap it in within()). */
async function until(condition) {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 20));
}

function statesOf(npc) {
  const states = [];
  npc.on("state", ({ state, code }) => states.push(code === null ? state : `${state}:${code}`));
  return states;
}

describe("conversation", () => {
  test("a say streams the NPC's whole reply and ends done", async () => {
    const npc = await client(server);
    try {
      assert.equal(npc.state, "open");
      assert.equal(npc.player, "alice");
      const turn = await sayWatched(npc, "hello there");
      const pieces = [];
      await within((async () => {
        for await (const piece of turn) pieces.push(piece);
      })());
      const end = await turn.done;
      assert.ok(pieces.length > 1, "the reply should stream in several pieces");
      assert.equal(pieces.join(""), await serverText(turn));
      assert.equal(end.reason, "done");
      assert.equal(end.chars, codePoints(pieces.join("")));
      assert.equal(end.kept, end.chars);
    } finally {
      npc.close();
    }
  });

  test("actions arrive as events with their offset, and approval is answered", async () => {
    const npc = await client(server);
    try {
      const turn = await npc.say("merchant", "What wares do you sell?");
      const action = await within(next(turn, "action"), undefined, "the open_shop action");
      assert.equal(action.name, "open_shop");
      assert.equal(action.approval, true);
      assert.ok(action.at >= 0);
      await action.accept();
      assert.equal(await within(action.done), "accepted");
      assert.equal((await turn.done).reason, "done");
    } finally {
      npc.close();
    }
  });

  test("context() sets game state the NPC's next turn uses", async () => {
    const npc = await client(server, "mona");
    try {
      await npc.context({ location: "inn" }, { npc: "merchant" });
      const turn = await npc.say("merchant", "Heard any gossip?");
      const text = await within(turn.readAll());
      assert.match(text, /Edda|Keep your voice down/, "the rumours told at the inn");
    } finally {
      npc.close();
    }
  });

  test("ping measures the round trip finer than whole milliseconds", async () => {
    const npc = await client(server);
    try {
      const ms = await within(npc.ping());
      assert.ok(ms > 0 && ms < 5000, `a round trip of ${ms} ms`);
      assert.ok(!Number.isInteger(ms), `${ms} ms: counted in whole milliseconds`);
      assert.equal(npc.latencyMs, ms);
    } finally {
      npc.close();
    }
  });

  test("the version names the protocol it speaks", () => {
    assert.equal(PROTOCOL_VERSION, 1);
    assert.match(VERSION, /^\d+\.\d+\.\d+$/);
  });
});

describe("interrupt", () => {
  test("interrupt with shown stops the turn and the NPC keeps exactly what was shown", async () => {
    const npc = await client(server);
    try {
      const turn = await sayWatched(npc);
      const it = turn[Symbol.asyncIterator]();
      await readUntil(it, turn, 60);
      await turn.interrupt(25);
      const rest = await within(readRest(it));
      const end = await turn.done;
      assert.deepEqual(rest, [], "nothing is yielded after interrupt()");
      assert.equal(end.reason, "interrupted");
      assert.equal(end.kept, 25);
      assert.ok(end.chars >= 60 && end.chars < codePoints(await serverText(turn)) + 1);
    } finally {
      npc.close();
    }
  });

  test("seen reports what a typewriter displayed, and a bare interrupt keeps that", async () => {
    const npc = await client(server);
    try {
      const turn = await sayWatched(npc);
      await within(next(turn, "text", () => turn.received >= 40));
      turn.seen(17);
      await within(until(() => npc.statistics().seenSent >= 1), undefined, "a seen report");
      assert.equal(turn.displayed, 17);
      await npc.interrupt(); // the newest open turn, shown = the last seen
      const end = await within(turn.done);
      assert.equal(end.reason, "interrupted");
      assert.equal(end.kept, 17);
    } finally {
      npc.close();
    }
  });
});

describe("reconnects", () => {
  test("a dropped socket resumes with no gap and no duplicate", async () => {
    const { WebSocket: Recording, sockets } = recordingWebSocket();
    const npc = await client(server, "alice", { WebSocket: Recording });
    const states = statesOf(npc);
    try {
      const session = npc.session;
      const turn = await sayWatched(npc);
      const it = turn[Symbol.asyncIterator]();
      const pieces = await readUntil(it, turn, 100);
      sockets[0].terminate(); // no close frame: the client sees 1006
      pieces.push(...(await within(readRest(it))));
      assert.equal(pieces.join(""), await serverText(turn));
      assert.equal((await turn.done).reason, "done");
      assert.equal(npc.session, session);
      const stats = npc.statistics();
      assert.equal(stats.resumed, 1);
      assert.equal(stats.gaps, 0);
      assert.deepEqual(states, ["resuming:1006", "open"]);
    } finally {
      npc.close();
    }
  });

  test("a server close with 4000 resumes and the text arrives exactly once", async () => {
    const npc = await client(server, "dana");
    try {
      const turn = await sayWatched(npc);
      const it = turn[Symbol.asyncIterator]();
      const pieces = await readUntil(it, turn, 80);
      await server.command("close", { code: CloseCode.SLOW_CONSUMER, player: "dana" });
      pieces.push(...(await within(readRest(it))));
      assert.equal(pieces.join(""), await serverText(turn));
      assert.equal(npc.statistics().resumed, 1);
    } finally {
      npc.close();
    }
  });

  test("after the resume window a snapshot continues active turns; lost actions expire", async () => {
    const npc = await client(server, "erin");
    try {
      const first = npc.session;
      const shop = await npc.say("merchant", "What wares do you sell?");
      const action = await within(next(shop, "action"));
      await within(shop.done); // ended; its action still waits for an answer
      const turn = await sayWatched(npc);
      const it = turn[Symbol.asyncIterator]();
      const pieces = await readUntil(it, turn, 80);
      const resync = next(npc, "resync");
      await server.command("end_sessions", { player: "erin" });
      await server.command("close", { code: CloseCode.SLOW_CONSUMER, player: "erin" });
      pieces.push(...(await within(readRest(it))));
      assert.equal(pieces.join(""), await serverText(turn), "the snapshot fills in the text");
      assert.notEqual(npc.session, first);
      assert.equal(npc.statistics().newSessions, 2);
      const { expiredActions } = await within(resync);
      assert.deepEqual(expiredActions, [action]);
      assert.equal(await action.done, "expired");
      assert.equal(action.lost, true);
    } finally {
      npc.close();
    }
  });

  test("a turn that ended while away, in a session that expired, ends as lost", async () => {
    const { WebSocket: Gated, sockets, gate } = gatedWebSocket();
    const npc = await client(server, "fay", { WebSocket: Gated, backoff: { initialMs: 50, maxMs: 100 } });
    try {
      const turn = await sayWatched(npc);
      await within(next(turn, "text"));
      gate.open = false; // reconnects fail until the session is gone
      sockets[0].terminate();
      await within(serverTurnDone(turn));
      await server.command("end_sessions", { player: "fay" });
      gate.open = true;
      const end = await within(turn.done);
      assert.equal(end.reason, LOST);
      assert.ok(npc.statistics().reconnectAttempts > 1);
      assert.equal(npc.state, "open");
    } finally {
      npc.close();
    }
  });

  test("4002 calls the token provider and resumes; before expiry it sends refresh", async () => {
    const tokens = [];
    let firstCall;
    const called = new Promise((resolve) => (firstCall = resolve));
    const provide = async () => {
      tokens.push(await server.token("gus", 3600));
      firstCall();
      return tokens.at(-1);
    };
    const npc = await connect({
      url: server.url,
      token: await server.token("gus", 4), // 4 s: refreshed a third of its life (< 3 s) early
      tokenProvider: provide,
      refreshMarginMs: 3000,
      WebSocket,
    });
    try {
      await within(called);
      await within(npc.ping()); // the refresh was answered before this pong
      assert.equal(npc.statistics().refreshes, 1);
      assert.equal(npc.statistics().connects, 1, "refreshed in place, no reconnect");
      await server.command("close", { code: CloseCode.TOKEN_EXPIRED, player: "gus" });
      await within(next(npc, "welcome"));
      assert.equal(tokens.length, 2, "one refresh before expiry, one new token after 4002");
      assert.equal(npc.statistics().resumed, 1);
      await within(npc.ping());
    } finally {
      npc.close();
    }
  });

  test("short tokens are renewed after two thirds of their life, not every second", async () => {
    const calls = [];
    const provide = async () => {
      calls.push(performance.now());
      return server.token("ned", 6);
    };
    // The default refreshMarginMs (60 s) is ten times the token's life.
    const npc = await connect({ url: server.url, tokenProvider: provide, WebSocket });
    try {
      await within(until(() => npc.statistics().refreshes >= 1), 8000, "the first refresh");
      const waited = calls[1] - calls[0];
      assert.ok(waited >= 2500, `renewed ${Math.round(waited)} ms after a 6 s token arrived`);
      assert.equal(calls.length, 2, "one token for hello, one refresh");
      assert.equal(npc.statistics().connects, 1, "refreshed in place, no reconnect");
    } finally {
      npc.close();
    }
  });

  test("after 4029 (rate limited) the first reconnect waits seconds, not milliseconds", async () => {
    const npc = await client(server, "ole");
    try {
      const welcome = next(npc, "welcome");
      const closed = performance.now();
      await server.command("close", { code: CloseCode.RATE_LIMITED, player: "ole" });
      assert.equal((await within(welcome)).resumed, true);
      const waited = performance.now() - closed;
      assert.ok(waited >= 1000, `reconnected ${Math.round(waited)} ms after 4029`);
      assert.equal(npc.statistics().reconnectAttempts, 1);
    } finally {
      npc.close();
    }
  });

  test("4002 without a token provider closes for good", async () => {
    const npc = await client(server, "hal");
    const closed = npc.wait();
    await server.command("close", { code: CloseCode.TOKEN_EXPIRED, player: "hal" });
    const error = await within(closed.catch((err) => err));
    assert.ok(error instanceof ConnectionClosedError);
    assert.equal(error.code, 4002);
    assert.equal(error.reconnectable, false);
    assert.equal(npc.state, "closed");
  });
});

describe("rooms", () => {
  test("two clients see presence, typing, said and the room's NPC turn", async () => {
    const alice = await client(server, "ivy");
    const bob = await client(server, "jon");
    try {
      await alice.join("tavern");
      const joined = next(alice, "presence", (p) => p.player === "jon");
      const roster = next(bob, "members");
      await bob.join("tavern");
      assert.deepEqual(await within(joined), { room: "tavern", player: "jon", state: "joined" });
      assert.deepEqual(await within(roster), { room: "tavern", members: ["ivy", "jon"] });

      const typing = next(alice, "typing");
      assert.equal(bob.typing({ room: "tavern", npc: "guard" }), true);
      assert.equal(bob.typing({ room: "tavern", npc: "guard" }), false, "debounced");
      assert.equal((await within(typing)).on, true);
      const stopped = next(alice, "typing", (t) => t.on === false);
      bob.stopTyping();
      await within(stopped);

      const said = next(alice, "said");
      const foreign = next(alice, "turn");
      const mine = await bob.say("guard", "Evening, all!", { room: "tavern" });
      assert.deepEqual(await within(said), { room: "tavern", player: "jon", npc: "guard", text: "Evening, all!" });
      const theirs = await within(foreign);
      assert.equal(theirs.id, mine.id);
      assert.equal(theirs.mine, false);
      assert.equal(await within(theirs.readAll()), await within(mine.readAll()));

      const left = next(alice, "presence", (p) => p.state === "left");
      await bob.leave("tavern");
      assert.equal((await within(left)).player, "jon");
    } finally {
      alice.close();
      bob.close();
    }
  });

  test("room.gap (a cluster server lost room talk) reaches the app as an event", async () => {
    const alice = await client(server, "kit");
    try {
      await alice.join("cellar");
      const gap = next(alice, "room.gap");
      await server.command("room_gap", { room: "cellar" }); // what a node sends after an outage
      assert.deepEqual(await within(gap), { room: "cellar" });
    } finally {
      alice.close();
    }
  });
});

describe("errors", () => {
  test("error frames reject with NpcError carrying the protocol code", async () => {
    const npc = await client(server, "kim");
    try {
      const cases = [
        [() => npc.say("nobody", "hi"), ErrorCode.UNKNOWN_NPC],
        [() => npc.say("merchant", "x".repeat(5000)), ErrorCode.TOO_LONG],
        [() => npc.act("a-nope-1", true), ErrorCode.UNKNOWN_ACTION],
        [() => npc.leave("nowhere"), ErrorCode.NOT_IN_ROOM],
      ];
      for (const [request, code] of cases) {
        const error = await within(request().then(() => null, (err) => err));
        assert.ok(error instanceof NpcError, `${code}: ${error}`);
        assert.equal(error.code, code);
        assert.equal(typeof error.serverMessage, "string");
      }
      assert.equal(npc.state, "open", "a refused request leaves the socket open");
    } finally {
      npc.close();
    }
  });

  test("a refused token rejects connect with ConnectionClosedError 4500", async () => {
    const error = await connect({ url: server.url, token: "not-a-token", WebSocket }).catch((err) => err);
    assert.ok(error instanceof ConnectionClosedError);
    assert.equal(error.code, CloseCode.AUTH_FAILED);
    assert.equal(error.reconnectable, false);
  });

  test("a server that is not there rejects with ServerUnreachable", async () => {
    const error = await connect({ url: "ws://127.0.0.1:9/ws", token: "t", WebSocket }).catch((err) => err);
    assert.ok(error instanceof ServerUnreachable, String(error));
  });

  test("a 45xx close stops for good and fails the open turn", async () => {
    const npc = await client(server, "lee");
    const states = statesOf(npc);
    const turn = await npc.say("merchant", "any news?");
    await server.command("close", { code: CloseCode.PROTOCOL_VIOLATION, player: "lee" });
    const error = await within(turn.readAll().then(() => null, (err) => err));
    assert.ok(error instanceof ConnectionClosedError);
    assert.equal(error.code, 4501);
    assert.equal(npc.closeCode, 4501);
    assert.deepEqual(states, ["closed:4501"]);
    assert.equal(npc.statistics().reconnectAttempts, 0);
    await assert.rejects(npc.say("merchant", "hello?"), ConnectionClosedError);
  });
});
