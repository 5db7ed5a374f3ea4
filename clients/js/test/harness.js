// A real npc-server for the tests: tests/js/serve_for_node.py in a subprocess,
// driven by one JSON command a line (see that file for the commands).

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import WebSocket from "ws";

import { connect } from "../src/index.js";

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const VENV_PYTHON = join(REPO, ".venv", "bin", "python");
const PYTHON = process.env.NPC_TEST_PYTHON ?? (existsSync(VENV_PYTHON) ? VENV_PYTHON : "python3");
export const TIMEOUT_MS = 10_000;

export class TestServer {
  static async start(scripted = {}) {
    const proc = spawn(PYTHON, ["-m", "tests.js.serve_for_node", JSON.stringify(scripted)], {
      cwd: REPO,
      stdio: ["pipe", "pipe", "inherit"],
    });
    const server = new TestServer(proc);
    const address = await server._next();
    server.url = address.url;
    server.http = address.http;
    server.apiKey = address.api_key;
    return server;
  }

  constructor(proc) {
    this.proc = proc;
    this._answers = [];
    this._waiting = [];
    this._exited = new Promise((resolve) => proc.on("exit", resolve));
    const lines = createInterface({ input: proc.stdout });
    lines.on("line", (line) => {
      const answer = JSON.parse(line);
      const waiter = this._waiting.shift();
      if (waiter) waiter(answer);
      else this._answers.push(answer);
    });
    proc.on("exit", (code) => {
      for (const waiter of this._waiting.splice(0)) waiter({ error: `server exited with ${code}` });
    });
  }

  _next() {
    if (this._answers.length > 0) return Promise.resolve(this._answers.shift());
    return new Promise((resolve) => this._waiting.push(resolve));
  }

  /** Run one command; its answer (throws on an error answer). */
  async command(op, args = {}) {
    const answer = this._next();
    this.proc.stdin.write(`${JSON.stringify({ op, ...args })}\n`);
    const result = await answer;
    if (result.error) throw new Error(`server command ${op} failed: ${result.error}`);
    return result;
  }

  async token(player, ttl = 3600) {
    return (await this.command("token", { player, ttl })).token;
  }

  /** POST the game server's API (docs/game-server.md): `{status, body}`. */
  async api(path, body) {
    const answer = await fetch(`${this.http}/api/${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${this.apiKey}` },
      body: JSON.stringify(body),
    });
    return { status: answer.status, body: await answer.json() };
  }

  async stop() {
    this.proc.stdin.end();
    await this._exited;
  }
}

/** A WebSocket class that remembers its instances, so a test can drop one. */
export function recordingWebSocket() {
  const sockets = [];
  class Recording extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  return { WebSocket: Recording, sockets };
}

/** Like recordingWebSocket, but while `gate.open` is false every connect is refused. */
export function gatedWebSocket() {
  const sockets = [];
  const gate = { open: true };
  class Gated extends WebSocket {
    constructor(url, ...rest) {
      super(gate.open ? url : "ws://127.0.0.1:9/ws", ...rest);
      sockets.push(this);
    }
  }
  return { WebSocket: Gated, sockets, gate };
}

/** A connected client for `player` (the `ws` package as its WebSocket). */
export async function client(server, player = "alice", options = {}) {
  return connect({ url: server.url, token: await server.token(player), WebSocket, ...options });
}

/** `promise`, or a rejection after `ms`. */
export function within(promise, ms = TIMEOUT_MS, what = "the test") {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The next `event` the emitter fires (its first argument). */
export function next(emitter, event, filter = () => true) {
  return new Promise((resolve) => {
    const off = emitter.on(event, (value) => {
      if (!filter(value)) return;
      off();
      resolve(value);
    });
  });
}

/** Consume text until at least `chars` code points arrived; the pieces. */
export async function readUntil(iterator, turn, chars) {
  const pieces = [];
  while (turn.consumed < chars) {
    const { value, done } = await iterator.next();
    if (done) break;
    pieces.push(value);
  }
  return pieces;
}

/** The rest of the turn's pieces. */
export async function readRest(iterator) {
  const pieces = [];
  for (;;) {
    const { value, done } = await iterator.next();
    if (done) return pieces;
    pieces.push(value);
  }
}
