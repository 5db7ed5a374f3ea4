// When the client renews its token (src/token.js), on a fake clock.

import assert from "node:assert/strict";
import { test } from "node:test";

import { MIN_REFRESH_DELAY_MS, TokenKeeper, refreshDelay } from "../src/token.js";

/** A clock whose time only moves in advance(); timers run in order, promises settle between. */
class FakeClock {
  constructor(start = 1_700_000_000_500) {
    this.time = start;
    this.timers = new Map();
    this.delays = [];
    this._next = 1;
  }

  now() {
    return this.time;
  }

  setTimeout(fn, ms) {
    const id = this._next++;
    this.timers.set(id, { at: this.time + ms, fn });
    this.delays.push(ms);
    return id;
  }

  clearTimeout(id) {
    this.timers.delete(id);
  }

  async advance(ms) {
    const end = this.time + ms;
    for (;;) {
      const due = [...this.timers.entries()].filter(([, t]) => t.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      this.timers.delete(due[0]);
      this.time = due[1].at;
      due[1].fn();
      await new Promise((resolve) => setImmediate(resolve)); // the provider's promise, refresh()
    }
    this.time = end;
  }
}

/** An unsigned JWT-shaped token (the client reads `exp` and `iat`, never verifies). */
function jwt(claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}.signature`;
}

/** A provider of `ttl`-second tokens, as npc-server issues them (whole-second iat and exp). */
function provider(clock, ttl, calls) {
  return async () => {
    calls.push(clock.now());
    const iat = Math.floor(clock.now() / 1000);
    return jwt({ sub: "alice", iat, exp: iat + ttl });
  };
}

/** The client's loop: a refresh installs the token and schedules the next (client.refresh()). */
function renewing(keeper, failures = []) {
  const refreshed = [];
  const refresh = async (token) => {
    refreshed.push(token);
    keeper.token = token;
    keeper.schedule(refresh, fail);
  };
  const fail = (err) => failures.push(err);
  return { refreshed, start: () => keeper.schedule(refresh, fail) };
}

test("5 s tokens with the default 60 s margin: renewed about every 3 s, not every second", async () => {
  const clock = new FakeClock();
  const calls = [];
  const keeper = new TokenKeeper(null, provider(clock, 5, calls), 60_000, clock);
  await keeper.forHello();
  const loop = renewing(keeper);
  loop.start();
  await clock.advance(12_000);
  // Before: the 60 s margin exceeded the token's life, so every renewal waited the 1 s
  // floor: 12 provider calls in 12 s.
  assert.ok(calls.length >= 4 && calls.length <= 5, `${calls.length} provider calls in 12 s`);
  const gaps = calls.slice(1).map((at, i) => at - calls[i]);
  assert.ok(gaps.every((gap) => gap >= 2000), `renewed ${gaps} ms apart`);
  // And every renewal came before the token it replaced expired.
  for (let i = 1; i < calls.length; i += 1) {
    const expired = (Math.floor(calls[i - 1] / 1000) + 5) * 1000;
    assert.ok(calls[i] < expired, `renewal ${i} at ${calls[i]}, the token expired at ${expired}`);
  }
});

test("a one-hour token is renewed refreshMarginMs before it expires", async () => {
  const clock = new FakeClock(1_700_000_000_000);
  const calls = [];
  const keeper = new TokenKeeper(null, provider(clock, 3600, calls), 60_000, clock);
  await keeper.forHello();
  renewing(keeper).start();
  assert.equal(clock.delays.at(-1), 3_540_000);
  await clock.advance(3_540_000);
  assert.equal(calls.length, 2);
  assert.equal(calls[1] - calls[0], 3_540_000);
});

test("the margin is a third of the lifetime, counted from iat, else from when the token came", () => {
  const now = 1_700_000_000_000;
  assert.equal(refreshDelay({ exp: now + 9000, issuedAt: now, now, marginMs: 60_000 }), 6000);
  assert.equal(refreshDelay({ exp: now + 600_000, issuedAt: now, now, marginMs: 60_000 }), 540_000);
  const clock = new FakeClock(now);
  const keeper = new TokenKeeper(jwt({ sub: "a", exp: (now + 30_000) / 1000 }), () => "x", 60_000, clock);
  clock.time += 3000; // no iat: its life started when the keeper got it
  assert.equal(keeper.refreshIn(), 27_000 - 10_000);
});

test("never sooner than the floor, even for a token about to expire", async () => {
  const clock = new FakeClock(1_700_000_000_000);
  const token = jwt({ sub: "a", iat: 1_700_000_000 - 100, exp: 1_700_000_000 });
  const keeper = new TokenKeeper(token, () => jwt({ sub: "a", exp: 1_700_000_100 }), 60_000, clock);
  renewing(keeper).start();
  assert.equal(clock.delays.at(-1), MIN_REFRESH_DELAY_MS);
});

test("a token beyond the timer range is renewed on time, not at once", async () => {
  const clock = new FakeClock(1_700_000_000_000);
  const days = 40;
  const calls = [];
  const keeper = new TokenKeeper(null, provider(clock, days * 86_400, calls), 60_000, clock);
  await keeper.forHello();
  renewing(keeper).start();
  assert.ok(clock.delays.at(-1) <= 2 ** 31 - 1, "setTimeout would fire at once past 2^31-1 ms");
  await clock.advance(days * 86_400_000 - 61_000);
  assert.equal(calls.length, 1, "not renewed before its margin");
  await clock.advance(2000);
  assert.equal(calls.length, 2);
});

test("a provider handing back a token that expires no later is reported, not sent", async () => {
  const clock = new FakeClock(1_700_000_000_000);
  const token = jwt({ sub: "a", iat: 1_700_000_000, exp: 1_700_000_006 });
  const keeper = new TokenKeeper(token, () => token, 60_000, clock);
  const failures = [];
  const loop = renewing(keeper, failures);
  loop.start();
  await clock.advance(10_000);
  assert.deepEqual(loop.refreshed, []);
  assert.equal(failures.length, 1);
  assert.match(failures[0].message, /expires no later/);
});

test("stop() drops a renewal whose provider answers afterwards", async () => {
  const clock = new FakeClock(1_700_000_000_000);
  let release;
  const late = new Promise((resolve) => (release = resolve));
  const token = jwt({ sub: "a", iat: 1_700_000_000, exp: 1_700_000_006 });
  const keeper = new TokenKeeper(token, () => late, 60_000, clock);
  const loop = renewing(keeper);
  loop.start();
  await clock.advance(5000); // the provider was asked
  keeper.stop(); // the client closed
  release(jwt({ sub: "a", exp: 1_700_000_100 }));
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(loop.refreshed, []);
});
