// The game server in the loop (docs/game-server.md), against a real npc-server:
// tools the client answers, turns the game starts, kicks.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { CloseCode, ConnectionClosedError, NpcClientError, NpcError, TOOL_ERROR_RESULT, ToolCall } from "../src/index.js";
import { TestServer, client, next, within } from "./harness.js";

let server;
before(async () => {
  server = await TestServer.start();
});
after(async () => {
  await server?.stop();
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves once `condition()` holds (checked every 20 ms; wrap it in within()). */
async function until(condition) {
  while (!condition()) await sleep(20);
}

function errorsOf(npc) {
  const errors = [];
  npc.on("error", (err) => errors.push(err));
  return errors;
}

describe("tools answered by the client", () => {
  test("a tools handler answers the speaker's call and the reply uses its result", async () => {
    const asked = [];
    const npc = await client(server, "nia", {
      tools: {
        inventory: async (args, call) => {
          asked.push({ args, call });
          await sleep(10);
          return { item: "a lantern" };
        },
      },
    });
    try {
      const seen = next(npc, "tool");
      const ended = next(npc, "tool.end");
      const turn = await npc.say("scout", "what do I carry?");
      const text = await within(turn.readAll());
      const call = await within(seen, undefined, "the tool event");
      assert.ok(call instanceof ToolCall);
      assert.equal(call.name, "inventory");
      assert.equal(call.answeredBy, "client");
      assert.equal(call.forMe, true);
      assert.equal(call.turn, turn.id);
      assert.equal(call.id, call.call);
      assert.match(call.call, /\S/);
      assert.deepEqual(asked, [{ args: {}, call }]);
      assert.deepEqual(await within(ended, undefined, "the tool.end event"), { call: call.call, status: "answered", turn: turn.id });
      assert.equal(await within(call.done), "answered");
      assert.equal(call.answered, true);
      assert.deepEqual(turn.tools, [call]);
      assert.match(text, /You carry a lantern\./);
      assert.equal((await turn.done).reason, "done");
    } finally {
      npc.close();
    }
  });

  test("a handler that throws is answered as an error: the NPC goes on at once", async () => {
    const npc = await client(server, "oda", {
      tools: {
        inventory: () => {
          throw new Error("the bag is not loaded");
        },
      },
    });
    const errors = errorsOf(npc);
    try {
      const started = performance.now();
      const turn = await npc.say("scout", "what do I carry?");
      const text = await within(turn.readAll());
      assert.ok(performance.now() - started < 4000, "answered, not left to the 5 s timeout");
      assert.match(text, /You carry nothing\./, "the NPC's fallback");
      const [call] = turn.tools;
      assert.equal(call.status, "answered");
      assert.deepEqual(TOOL_ERROR_RESULT, { error: "the tool's answer is missing: error" });
      assert.equal(errors.length, 1);
      assert.ok(errors[0] instanceof NpcClientError);
      assert.match(errors[0].message, /inventory.*the bag is not loaded/);
    } finally {
      npc.close();
    }
  });

  test("a result the server refuses (nested too deep) is reported and answered as an error", async () => {
    const npc = await client(server, "ori", { tools: { inventory: () => ({ a: { b: { c: { d: { e: 1 } } } } }) } });
    const errors = errorsOf(npc);
    try {
      const turn = await npc.say("scout", "what do I carry?");
      const text = await within(turn.readAll());
      assert.match(text, /You carry nothing\./);
      assert.equal(turn.tools[0].answered, true, "the error result was taken");
      assert.equal(errors.length, 1);
      assert.match(errors[0].message, /inventory: its answer was refused \(bad_frame: .*deeper/);
      assert.ok(errors[0].cause instanceof NpcError);
    } finally {
      npc.close();
    }
  });

  test("a call answered by hand from the tool event; a second or late answer is false", async () => {
    const npc = await client(server, "pia");
    try {
      const answers = [];
      npc.on("tool", (call) => {
        answers.push(call.answer({ item: "fifty feet of rope" }), call.answer({ item: "a spoon" }));
      });
      const turn = await npc.say("scout", "what do I carry?");
      const text = await within(turn.readAll());
      assert.deepEqual(await Promise.all(answers), [true, false]);
      assert.match(text, /You carry fifty feet of rope\./);
      const [call] = turn.tools;
      assert.equal(await call.answer({ item: "late" }), false, "ended: not sent");
      // Sent by id, the server says unknown_call: the answer is not waited for.
      assert.equal(await within(npc.answerTool(call.call, { item: "late" })), false);
      assert.equal(await within(npc.answerTool("c-nobody-1", 1)), false);
      assert.equal(npc.state, "open");
    } finally {
      npc.close();
    }
  });

  test("a call not answered in time ends timeout; a handler answering too late is no error", async () => {
    let answered = null;
    const npc = await client(server, "quy", {
      tools: {
        glance: async () => {
          await sleep(700); // the tool's timeout_s is 0.3
          answered = true;
          return { item: "too late" };
        },
      },
    });
    const errors = errorsOf(npc);
    try {
      const ended = next(npc, "tool.end");
      const turn = await npc.say("scout", "look around");
      const text = await within(turn.readAll());
      assert.equal((await within(ended, undefined, "the tool.end event")).status, "timeout");
      assert.match(text, /I see nothing\./);
      await within(until(() => answered));
      await within(npc.ping());
      const [call] = turn.tools;
      assert.equal(call.status, "timeout");
      assert.equal(call.answered, false);
      assert.deepEqual(errors, []);
    } finally {
      npc.close();
    }
  });

  test("a client tool nobody answers is reported: the reply waits for its timeout", async () => {
    const npc = await client(server, "rue");
    const errors = errorsOf(npc);
    try {
      const turn = await npc.say("scout", "look around");
      await within(turn.readAll());
      assert.equal(turn.tools[0].status, "timeout");
      assert.equal(errors.length, 1);
      assert.match(errors[0].message, /glance.*nothing answers it/);
    } finally {
      npc.close();
    }
  });

  test("in a room only the speaker answers; the others see the call and cannot answer it", async () => {
    let bobAsked = 0;
    const alice = await client(server, "sue", { tools: { inventory: () => ({ item: "a lantern" }) } });
    const bob = await client(server, "tom", { tools: { inventory: () => ((bobAsked += 1), { item: "a rock" }) } });
    try {
      await alice.join("camp");
      await bob.join("camp");
      const theirs = next(bob, "turn");
      const bobCall = next(bob, "tool");
      const mine = await alice.say("scout", "what do I carry?", { room: "camp" });
      const call = await within(bobCall);
      assert.equal(call.forMe, false);
      assert.equal(call.answeredBy, "client");
      assert.equal(await within(bob.answerTool(call, { item: "a rock" })), false, "unknown_call: not bob's");
      const text = await within((await within(theirs)).readAll());
      assert.match(text, /You carry a lantern\./);
      assert.equal(await within(mine.readAll()), text);
      assert.equal(mine.tools[0].forMe, true);
      assert.equal(await within(call.done), "answered");
      assert.equal(bobAsked, 0, "bob's handler never runs for alice's call");
    } finally {
      alice.close();
      bob.close();
    }
  });

  test("an interrupt while a call waits ends it cancelled", async () => {
    const npc = await client(server, "uma");
    try {
      const asked = next(npc, "tool");
      const turn = await npc.say("scout", "what do I carry?");
      const call = await within(asked);
      await turn.interrupt();
      assert.equal(await within(call.done), "cancelled");
      assert.equal((await within(turn.done)).reason, "interrupted");
      assert.equal(await call.answer({ item: "x" }), false);
    } finally {
      npc.close();
    }
  });
});

describe("turns the game starts", () => {
  test("turn.start's caused_by and event are on the turn", async () => {
    const npc = await client(server, "vic");
    try {
      const foreign = next(npc, "turn");
      const { status, body } = await server.api("say", {
        npc: "guard",
        player: "vic",
        event: "theft",
        text: "vic stole an apple",
      });
      assert.equal(status, 200, JSON.stringify(body));
      const turn = await within(foreign);
      assert.equal(turn.id, body.turn);
      assert.equal(turn.causedBy, "game");
      assert.equal(turn.event, "theft");
      assert.equal(turn.replyTo, null);
      assert.equal(turn.mine, false);
      assert.equal(turn.player, "vic");
      assert.ok((await within(turn.readAll())).length > 0);
      const own = await npc.say("guard", "sorry!");
      await within(own.readAll());
      assert.equal(own.causedBy, null);
      assert.equal(own.event, null);
    } finally {
      npc.close();
    }
  });

  test("a game turn in a room names no player", async () => {
    const npc = await client(server, "wes");
    try {
      await npc.join("square");
      const foreign = next(npc, "turn");
      const { status } = await server.api("say", { npc: "guard", room: "square", text: "bells ring" });
      assert.equal(status, 200);
      const turn = await within(foreign);
      assert.equal(turn.causedBy, "game");
      assert.equal(turn.event, null, "no event given");
      assert.equal(turn.player, "");
      assert.equal(turn.room, "square");
    } finally {
      npc.close();
    }
  });
});

describe("kicks", () => {
  test("4508 (kicked by the game server) closes for good: no reconnect", async () => {
    const npc = await client(server, "xia");
    const states = [];
    npc.on("state", ({ state, code }) => states.push(`${state}:${code}`));
    const closed = npc.wait().catch((err) => err);
    const { status, body } = await server.api("kick", { player: "xia" });
    assert.equal(status, 200, JSON.stringify(body));
    const error = await within(closed);
    assert.ok(error instanceof ConnectionClosedError);
    assert.equal(error.code, CloseCode.KICKED);
    assert.equal(CloseCode.KICKED, 4508);
    assert.equal(error.reconnectable, false);
    await sleep(300); // a reconnect would have started by now
    assert.deepEqual(states, ["closed:4508"]);
    assert.equal(npc.statistics().reconnectAttempts, 0);
    assert.equal(npc.statistics().connects, 1);
  });
});
