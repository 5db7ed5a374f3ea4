// The client's close and error code tables against docs/protocol.md, the wire reference.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { CloseCode, ConnectionClosedError, ErrorCode, NpcError, shouldReconnect } from "../src/index.js";
import { Router } from "../src/router.js";
import { Turn } from "../src/turn.js";
import { REPO } from "./harness.js";

const PROTOCOL = readFileSync(join(REPO, "docs", "protocol.md"), "utf8");
const DECLARATIONS = readFileSync(join(REPO, "clients", "js", "src", "index.d.ts"), "utf8");

/** The rows of the table under `## heading`: arrays of cell texts. */
function tableRows(heading) {
  const start = PROTOCOL.indexOf(`\n## ${heading}\n`);
  assert.ok(start >= 0, `no section ${heading} in docs/protocol.md`);
  const section = PROTOCOL.slice(start + 1).split(/\n## /)[0];
  return section
    .split("\n")
    .filter((line) => line.startsWith("|") && !/^\|\s*-/.test(line))
    .slice(1) // the header
    .map((line) => line.slice(1, -1).split(" | ").map((cell) => cell.trim()));
}

const CLOSES = tableRows("Close codes").map(([code, meaning, should]) => ({ code: Number(code), meaning, should }));
const ERRORS = tableRows("Error codes").map(([code]) => code.replace(/`/g, ""));

test("the doc's tables are read (so the checks below check something)", () => {
  assert.ok(CLOSES.length >= 15, `${CLOSES.length} close codes`);
  assert.ok(CLOSES.every(({ code }) => Number.isInteger(code)));
  assert.ok(ERRORS.length >= 14, `${ERRORS.length} error codes`);
  assert.ok(ERRORS.includes("unknown_call") && ERRORS.includes("unavailable"));
});

test("every close code of docs/protocol.md is in CloseCode, and no other", () => {
  const byNumber = (a, b) => a - b;
  assert.deepEqual(Object.values(CloseCode).sort(byNumber), CLOSES.map(({ code }) => code).sort(byNumber));
  for (const [name, code] of Object.entries(CloseCode)) {
    assert.match(DECLARATIONS, new RegExp(`readonly ${name}: ${code};`), `index.d.ts declares ${name}`);
  }
});

test("the client reconnects after exactly the close codes the doc says to", () => {
  for (const { code, should } of CLOSES) {
    // "reconnect …", "get a new token, reconnect …"; or "stop …", "fix …"
    const doc = /^(reconnect|get a new token)/.test(should);
    assert.ok(doc || /^(stop|fix)/.test(should), `${code}: "${should}"`);
    assert.equal(shouldReconnect(code), doc, `${code}: the doc says "${should}"`);
    assert.equal(new ConnectionClosedError(code).reconnectable, doc, `${code}`);
  }
  assert.equal(shouldReconnect(CloseCode.KICKED), false, "4508: do not reconnect");
  // "For codes you do not know: in 4000–4499 reconnect, in 4500–4999 stop,
  // 1001/1011/1006 reconnect, anything else stop."
  assert.match(PROTOCOL, /For codes you do not know: in 4000–4499 reconnect, in\s+4500–4999 stop, 1001\/1011\/1006 reconnect, anything else stop/);
  for (const [code, reconnect] of [[4100, true], [4499, true], [4600, false], [4999, false], [1002, false], [3000, false], [1012, false]]) {
    assert.equal(shouldReconnect(code), reconnect, `unknown ${code}`);
  }
});

test("every error code of docs/protocol.md is in ErrorCode and its type, and no other", () => {
  assert.deepEqual(Object.values(ErrorCode).sort(), [...ERRORS].sort());
  const union = DECLARATIONS.match(/export type ErrorCodeValue =([^;]*);/)[1];
  assert.deepEqual([...union.matchAll(/"(\w+)"/g)].map((m) => m[1]).sort(), [...ERRORS].sort());
});

test("unavailable (cluster mode) rejects the request with its retry_after", async () => {
  const r = new Router({
    newTurn: (id, mine) => new Turn(id, { mine, seen: () => {}, interrupt: async () => {} }),
    answer: async () => {},
    onForeignTurn: () => {},
    onEvent: () => {},
  });
  const pending = r.requests.add({ t: "join", room: "tavern" });
  r.receive({ t: "error", seq: 1, id: pending.frame.id, code: "unavailable", message: "rooms are unavailable; try again", retry_after: 1.0 });
  const error = await pending.promise.catch((err) => err);
  assert.ok(error instanceof NpcError);
  assert.equal(error.code, ErrorCode.UNAVAILABLE);
  assert.equal(error.retryAfter, 1);
});
