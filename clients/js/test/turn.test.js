// The sans-I/O parts of the client: text placement by code point, pacing, backoff.

import assert from "node:assert/strict";
import { test } from "node:test";

import { DEFAULT_BACKOFF, RATE_LIMITED_INITIAL_MS, RateBudget, backoffDelay, reconnectDelay } from "../src/pacing.js";
import { Router } from "../src/router.js";
import { Turn, codePoints } from "../src/turn.js";

function router() {
  const events = [];
  const r = new Router({
    newTurn: (id, mine) => new Turn(id, { mine, seen: () => {}, interrupt: async () => {} }),
    answer: async () => {},
    onForeignTurn: (turn) => events.push(["turn", turn.id]),
    onEvent: (frame) => events.push([frame.t, frame]),
  });
  return { r, events };
}

test("offsets count code points: an emoji is one character, as the server counts", () => {
  const { r } = router();
  let seq = 0;
  r.receive({ t: "turn.start", seq: ++seq, turn: "t1", npc: "merchant", player: "bob" });
  const turn = r.turns.get("t1");
  r.receive({ t: "delta", seq: ++seq, turn: "t1", text: "Hi 🙂 ", at: 0 });
  r.receive({ t: "delta", seq: ++seq, turn: "t1", text: "🙂 there", at: 3 }); // overlaps by two
  r.receive({ t: "delta", seq: ++seq, turn: "t1", text: "!", at: 10 });
  assert.equal(turn.text, "Hi 🙂 there!");
  assert.equal(turn.received, 11);
  assert.equal(turn.text.length, 12, "12 UTF-16 units, 11 code points");
  assert.equal(codePoints(turn.text), 11);
});

test("a replayed frame is dropped by seq, and a gap waits for the text before it", () => {
  const { r } = router();
  r.receive({ t: "turn.start", seq: 1, turn: "t1", npc: "guard", player: "bob" });
  const turn = r.turns.get("t1");
  r.receive({ t: "delta", seq: 2, turn: "t1", text: "Halt. ", at: 0 });
  r.receive({ t: "delta", seq: 2, turn: "t1", text: "Halt. ", at: 0 });
  assert.equal(r.duplicates, 1);
  r.receive({ t: "delta", seq: 3, turn: "t1", text: "business?", at: 17 }); // "State your " missing
  assert.equal(turn.text, "Halt. ");
  r.receive({ t: "delta", seq: 4, turn: "t1", text: "State ", at: 6 });
  assert.equal(turn.text, "Halt. State ");
  r.receive({ t: "delta", seq: 5, turn: "t1", text: "State your ", at: 6 });
  assert.equal(turn.text, "Halt. State your business?");
});

test("a snapshot after a new session keeps listed turns and ends the others as lost", async () => {
  const { r } = router();
  r.receive({ t: "turn.start", seq: 1, turn: "a", npc: "merchant", player: "bob" });
  r.receive({ t: "turn.start", seq: 2, turn: "b", npc: "guard", player: "bob" });
  const [a, b] = [r.turns.get("a"), r.turns.get("b")];
  r.newSession(0);
  r.receive({ t: "turn.start", seq: 1, turn: "a", npc: "merchant", player: "bob" });
  r.receive({ t: "delta", seq: 2, turn: "a", text: "all so far", at: 0 });
  const { lost } = r.snapshotDone();
  assert.deepEqual(lost, [b]);
  assert.equal((await b.done).reason, "lost");
  assert.equal(a.ended, false);
  assert.equal(a.text, "all so far");
});

test("optional frames leave half the burst for requests", () => {
  let now = 0;
  const budget = new RateBudget(10, 10, () => now);
  let sent = 0;
  while (budget.takeOptional()) sent += 1;
  assert.equal(sent, 5); // 10 tokens; optional ones only while 1 + 5 are left
  budget.spend(); // a request still goes
  now += 1000; // a second refills 10 tokens (capped at the burst)
  assert.equal(budget.takeOptional(), true);
});

test("backoff grows, is capped, and is jittered down to half", () => {
  const backoff = { ...DEFAULT_BACKOFF, initialMs: 100, maxMs: 1000 };
  assert.equal(backoffDelay(backoff, 0, () => 1), 100);
  assert.equal(backoffDelay(backoff, 0, () => 0), 50);
  assert.equal(backoffDelay(backoff, 3, () => 1), 800);
  assert.equal(backoffDelay(backoff, 10, () => 1), 1000);
});

test("after 4029 the reconnect backoff starts at seconds; other codes keep the configured one", () => {
  const backoff = { ...DEFAULT_BACKOFF, initialMs: 100, maxMs: 1000 };
  assert.equal(reconnectDelay(backoff, 0, 1006, () => 1), 100);
  assert.equal(reconnectDelay(backoff, 0, 4029, () => 1), RATE_LIMITED_INITIAL_MS);
  assert.equal(reconnectDelay(backoff, 0, 4029, () => 0), RATE_LIMITED_INITIAL_MS / 2);
  assert.equal(reconnectDelay(backoff, 1, 4029, () => 1), RATE_LIMITED_INITIAL_MS, "a maxMs under it is raised to it");
  assert.equal(reconnectDelay(DEFAULT_BACKOFF, 1, 4029, () => 1), 2 * RATE_LIMITED_INITIAL_MS, "growing");
  assert.equal(reconnectDelay({ ...backoff, initialMs: 5000, maxMs: 9000 }, 0, 4029, () => 1), 5000);
});

test("tool frames: a call joins its turn, tool.end ends it and is an event; a lost turn's call ends lost", async () => {
  const { r, events } = router();
  let seq = 0;
  r.receive({ t: "turn.start", seq: ++seq, turn: "t1", npc: "scout", player: "bob", caused_by: "game", event: "theft" });
  const turn = r.turns.get("t1");
  assert.equal(turn.causedBy, "game");
  assert.equal(turn.event, "theft");
  const asked = [];
  turn.on("tool", (call) => asked.push(call));
  r.receive({ t: "tool", seq: ++seq, turn: "t1", call: "c1", name: "inventory", args: { bag: "left" }, answered_by: "client" });
  r.receive({ t: "tool", seq: ++seq, turn: "t1", call: "c1", name: "inventory", args: {}, answered_by: "client" }); // again: ignored
  const [call] = asked;
  assert.deepEqual([asked.length, call.call, call.name, call.args, call.answeredBy], [1, "c1", "inventory", { bag: "left" }, "client"]);
  assert.deepEqual(turn.tools, [call]);
  r.receive({ t: "tool.end", seq: ++seq, call: "c1", status: "answered", turn: "t1" });
  assert.equal(await call.done, "answered");
  assert.equal(await call.answer(1), false, "an ended call is not answered");
  assert.deepEqual(events.filter(([t]) => t === "tool.end").map(([, f]) => [f.call, f.status]), [["c1", "answered"]]);

  r.receive({ t: "tool", seq: ++seq, turn: "t1", call: "c2", name: "glance", args: {}, answered_by: "client" });
  r.newSession(0);
  r.snapshotDone(); // the new session does not know t1
  assert.equal((await turn.done).reason, "lost");
  assert.equal(await turn.tools[1].done, "lost");
  assert.equal(r.tools.size, 0);
});
