// One protocol v1 session that outlives its WebSockets.
//
// `NpcClient` holds the protocol state (through `Router`) and the public API.
// When a socket closes with a code that allows it, the client reconnects with
// jittered exponential backoff and resumes with the last processed seq, so
// turns go on streaming into the same Turn handles. After every reconnect a
// `ping` fences the server's backlog: once its `pong` is in, requests the
// server never received are resent (resumed session) or fail with RequestLost
// (new session), and turns and actions missing from a new session's snapshot
// end (`lost`) and expire. Tool calls the NPC asks this client (`tool` with
// `answered_by:"client"`) go to the `tools` handlers and the "tool" listeners.

import { DEFAULT_BACKOFF, RateBudget, SeenReporter, TypingNotices, reconnectDelay } from "./pacing.js";
import { Emitter } from "./emitter.js";
import {
  CloseCode,
  ConnectionClosedError,
  ErrorCode,
  NpcClientError,
  NpcError,
  RequestLost,
  RequestTimeout,
} from "./errors.js";
import { Router } from "./router.js";
import { decodeFrame, encodeFrame, isOpen, openSocket } from "./socket.js";
import { TOOL_ERROR_RESULT, ToolCall, Turn } from "./turn.js";
import { TokenKeeper } from "./token.js";

export const VERSION = "0.1.0";
/** The wire protocol this client speaks: npc-server protocol v1. */
export const PROTOCOL_VERSION = 1;

const FENCE_TIMEOUT_MS = 10_000;
const EVENT_FRAMES = new Set(["said", "typing", "presence", "members", "room.gap", "draining", "notice", "tool.end"]);

/** Open a session: connect, send `hello`, wait for `welcome`. The first connect is not retried. */
export async function connect(options) {
  const client = new NpcClient(options);
  await client.open();
  return client;
}

export class NpcClient extends Emitter {
  constructor(options) {
    super();
    const o = { ...options };
    if (typeof o.url !== "string") throw new TypeError("url is required (ws://host:port/ws)");
    if (!o.token && !o.tokenProvider) throw new TypeError("token or tokenProvider is required");
    this.url = o.url;
    this._WebSocket = o.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("no WebSocket here: pass WebSocket (e.g. the `ws` package) in the options");
    }
    this._tokens = new TokenKeeper(o.token, o.tokenProvider, o.refreshMarginMs ?? 60_000);
    this._toolHandlers = new Map();
    for (const [name, handler] of Object.entries(o.tools ?? {})) {
      if (typeof handler !== "function") throw new TypeError(`tools.${name} must be a function`);
      this._toolHandlers.set(name, handler);
    }
    this._reconnect = o.reconnect ?? true;
    this._backoff = { ...DEFAULT_BACKOFF, ...o.backoff };
    this._requestTimeoutMs = o.requestTimeoutMs ?? 10_000;
    this._openTimeoutMs = o.openTimeoutMs ?? 10_000;
    this.clientName = o.clientName ?? `npc-client-js/${VERSION}`;
    this.state = "idle";
    this.closeCode = null;
    this.closeReason = null;
    this.closedError = null;
    this.session = null;
    this.player = null;
    this.server = null;
    this.limits = {};
    this.heartbeat = null;
    this.latencyMs = null;
    this.generation = 0;
    this._ws = null;
    this._closing = false;
    this._drainDelayMs = null;
    this._budget = new RateBudget();
    this._waiters = [];
    this._seen = new SeenReporter(
      (frame) => this._sendOptional(frame),
      () => (this._counts.seenSent += 1),
    );
    this._typing = new TypingNotices((frame, force) => this._sendOptional(frame, force));
    this._liveness = null;
    this._counts = { connects: 0, resumed: 0, newSessions: 0, reconnectAttempts: 0, frames: 0, pingsAnswered: 0, seenSent: 0, refreshes: 0 };
    this._router = new Router({
      newTurn: (id, mine) => this._newTurn(id, mine),
      answer: (action, accept) => this.act(action, accept),
      onForeignTurn: (turn) => this.emit("turn", turn),
      onEvent: (frame) => this._event(frame),
      toolCall: (frame, turn) => this._newToolCall(frame, turn),
      onTool: (call, turn) => this._tool(call, turn),
    });
  }

  // --- lifecycle ---------------------------------------------------------

  /** The first connection: errors go to the caller, nothing is retried. */
  async open() {
    if (this.state !== "idle") throw new NpcClientError(`open() called in state ${this.state}`);
    this._setState("connecting");
    try {
      await this._handshake(false);
    } catch (err) {
      this._finish(err instanceof ConnectionClosedError ? err : new ConnectionClosedError(1006, err.message, { reconnectable: false }), false);
      throw err;
    }
  }

  /** Close the session for good (code 1000: the server forgets it). */
  close() {
    if (this.state === "closed") return;
    this._closing = true;
    const ws = this._ws;
    this._ws = null;
    ws?.close(1000, "closed by the client");
    this._finish(new ConnectionClosedError(1000, "closed by the client", { reconnectable: false }));
  }

  /** Resolves when the client is closed; rejects with why, unless close() closed it. */
  wait() {
    return new Promise((resolve, reject) => {
      const settle = () => (this._closing ? resolve() : reject(this.closedError));
      if (this.state === "closed") settle();
      else this.on("closed", settle);
    });
  }

  statistics() {
    return { ...this._counts, duplicates: this._router.duplicates, gaps: this._router.gaps };
  }

  // --- requests ----------------------------------------------------------

  /** Speak to an NPC; resolves with the turn's handle once the server acks. */
  async say(npc, text, { room } = {}) {
    const pending = await this._exchange({ t: "say", npc, text, room });
    if (!pending.turn) throw new NpcClientError(`ack for say without a turn id`);
    return pending.turn;
  }

  /** Stop `turn` (default: the newest turn not yet ended); `shown` defaults to what was displayed. */
  async interrupt(turn, shown) {
    const target = turn ?? this._router.newestOpenTurn();
    if (target) return target.interrupt(shown);
    await this._request({ t: "interrupt" });
  }

  /** Answer an action that asked for approval (an Action or its id). */
  async act(action, accept) {
    const id = typeof action === "string" ? action : action.id;
    await this._request({ t: "act", action: id, accept: Boolean(accept) });
  }

  join(room) {
    return this._request({ t: "join", room }).then(() => undefined);
  }

  leave(room) {
    return this._request({ t: "leave", room }).then(() => undefined);
  }

  /** Game state for the NPC's next turns (all NPCs without `npc`); latest wins. */
  context(data, { npc } = {}) {
    return this._request({ t: "context", data, npc }).then(() => undefined);
  }

  /**
   * Answer a tool call the NPC asked this client (a ToolCall or its id). True
   * when the server took the answer; false when the call no longer waits for
   * it (ended, timed out, answered already, or not this player's: `unknown_call`).
   */
  async answerTool(call, result) {
    if (call instanceof ToolCall) return call.answer(result);
    const known = this._router.tools.get(String(call));
    if (known) return known.answer(result);
    return this._sendToolResult(String(call), result);
  }

  /** Replace the token before it expires; later reconnects use it. */
  async refresh(token) {
    await this._request({ t: "refresh", token });
    this._tokens.token = token;
    this._counts.refreshes += 1;
    this._scheduleRefresh();
  }

  /** Round trip in ms (fractional: a loopback round trip is well under one); also kept
   * in `latencyMs`. */
  async ping() {
    const started = performance.now();
    await this._request({ t: "ping", ts: Date.now() });
    this.latencyMs = performance.now() - started;
    return this.latencyMs;
  }

  /**
   * Call on every keystroke: tells the room (or NPC) "typing" once, again
   * only every few seconds, and "stopped" after a pause. Skipped (false)
   * when it would crowd the server's rate limit.
   */
  typing(where = {}) {
    return this._typing.keystroke(where);
  }

  /** Say "stopped typing" now, if "typing" was said. */
  stopTyping() {
    this._typing.stop();
  }

  get turns() {
    return [...this._router.turns.values()];
  }

  // --- connecting ------------------------------------------------------------

  async _hello(resume) {
    const hello = { t: "hello", token: await this._tokens.forHello(), client: this.clientName };
    if (resume && this.session) hello.resume = { session: this.session, seq: this._router.lastSeq };
    return hello;
  }

  async _handshake(resume) {
    const hello = await this._hello(resume);
    await openSocket({
      url: this.url,
      WebSocket: this._WebSocket,
      hello,
      timeoutMs: this._openTimeoutMs,
      onWelcome: (ws, welcome) => this._welcomed(ws, welcome, resume),
      onFrame: (ws, data) => this._onData(ws, data),
      onClose: (ws, code, reason) => this._onClose(ws, code, reason),
    });
  }

  _welcomed(ws, welcome, reconnected) {
    if (this._closing) {
      ws.close(1000, "closed by the client");
      return;
    }
    const resumed = welcome.resumed === true && welcome.session === this.session;
    this._ws = ws;
    this.generation += 1;
    this._counts.connects += 1;
    this._counts[resumed ? "resumed" : "newSessions"] += 1;
    this.session = String(welcome.session);
    this.player = String(welcome.player);
    this.server = welcome.server ?? null;
    this.limits = welcome.limits ?? {};
    this.heartbeat = typeof welcome.heartbeat === "number" ? welcome.heartbeat : null;
    this._budget = new RateBudget(this.limits.rate_per_s ?? 20, this.limits.rate_burst ?? 40);
    if (!resumed) this._router.newSession(Number.isInteger(welcome.seq) ? welcome.seq : 0);
    this._touch();
    this._scheduleRefresh();
    this._setState("open");
    this.emit("welcome", { resumed, reconnected, session: this.session });
    const waiters = this._waiters.splice(0);
    for (const waiter of waiters) waiter.resolve(ws);
    if (reconnected) this._settle(resumed, this.generation).catch((err) => this._report(err));
  }

  /** After a reconnect: resend or fail requests, and end turns and actions the server forgot. */
  async _settle(resumed, generation) {
    try {
      await this._request({ t: "ping", ts: 0 }, FENCE_TIMEOUT_MS);
    } catch {
      return; // the socket went again: the next reconnect settles instead
    }
    for (const pending of this._router.requests.sentBefore(generation)) {
      if (resumed) this._sendPending(pending); // its promise carries the outcome
      else this._router.requests.settle(pending.frame.id, new RequestLost("the session was replaced before the server answered"));
    }
    if (resumed) return;
    const { lost, expired } = this._router.snapshotDone();
    this.emit("resync", { lostTurns: lost, expiredActions: expired });
  }

  _onData(ws, data) {
    if (ws !== this._ws) return;
    this._counts.frames += 1;
    this._touch();
    const frame = decodeFrame(data);
    if (!frame) {
      this._report(new NpcClientError("ignored a server message that is not a protocol frame"));
      return;
    }
    if (frame.t === "ping") {
      ws.send(encodeFrame({ t: "pong", ts: frame.ts })); // at once, ahead of anything queued
      this._counts.pingsAnswered += 1;
      return;
    }
    if (frame.t === "draining") this._drainDelayMs = Math.max(0, (frame.retry_after ?? 1) * 1000);
    this._router.receive(frame);
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    clearTimeout(this._liveness);
    if (this._closing) return;
    const closed = new ConnectionClosedError(code, reason);
    if (code === CloseCode.TOKEN_EXPIRED) {
      this._tokens.expired = true;
      if (!this._tokens.renewable) {
        closed.reconnectable = false;
        closed.message += " (pass tokenProvider to renew the token)";
      }
    }
    if (!this._reconnect || !closed.reconnectable) {
      this._finish(closed);
      return;
    }
    this._reconnectLoop(closed).catch((err) => this._finish(err));
  }

  /** Resume until a socket opens, the server refuses for good, or time is up. */
  async _reconnectLoop(closed) {
    this._setState("resuming", closed.code, closed.reason);
    const started = Date.now();
    let code = closed.code; // the last refusal: after 4029 the backoff starts at seconds
    // After `draining` the first attempt waits the server's retry_after.
    let delay = this._drainDelayMs ?? reconnectDelay(this._backoff, 0, code);
    this._drainDelayMs = null;
    for (let attempt = 1; ; attempt += 1) {
      await sleep(delay);
      if (this._closing) return;
      this._counts.reconnectAttempts += 1;
      try {
        await this._handshake(true);
        return;
      } catch (err) {
        if (err instanceof ConnectionClosedError) {
          code = err.code;
          if (err.code === CloseCode.TOKEN_EXPIRED && this._tokens.renewable) this._tokens.expired = true;
          else if (!err.reconnectable) throw err;
        }
        // Unreachable, no welcome, or a token provider that failed: try again later.
        this.emit("retry", { attempt, error: err });
      }
      if (this._backoff.giveUpAfterMs !== null && Date.now() - started > this._backoff.giveUpAfterMs) {
        throw new ConnectionClosedError(closed.code, `gave up reconnecting after ${this._backoff.giveUpAfterMs} ms`, { reconnectable: true });
      }
      delay = reconnectDelay(this._backoff, attempt, code);
    }
  }

  _finish(error, emit = true) {
    if (this.state === "closed") return;
    this.closedError = error;
    this.closeCode = error.code;
    this.closeReason = error.reason;
    clearTimeout(this._liveness);
    this._tokens.stop();
    this._seen.stop();
    this._typing.cancel();
    this._router.failAll(error);
    for (const waiter of this._waiters.splice(0)) waiter.reject(error);
    this._setState("closed", error.code, error.reason);
    if (emit) this.emit("closed", error);
  }

  _setState(state, code = null, reason = null) {
    if (state === this.state) return;
    this.state = state;
    this.emit("state", { state, code, reason });
  }

  /** A socket that carried nothing (not even the server's ping) for long is dead: drop it. */
  _touch() {
    clearTimeout(this._liveness);
    if (!this.heartbeat) return;
    const ws = this._ws;
    this._liveness = setTimeout(() => {
      if (ws !== this._ws) return;
      ws.close(4001, "client: nothing heard from the server");
      this._onClose(ws, 1006, "nothing heard from the server");
    }, this.heartbeat * 2500 + 2000);
  }

  // --- tokens --------------------------------------------------------------

  /** Renew the token in place before it expires; a failure is reported (a 4002 renews anyway). */
  _scheduleRefresh() {
    const report = (err) => this._report(err);
    this._tokens.schedule((token) => this.refresh(token).catch(report), report);
  }

  // --- sending ---------------------------------------------------------------

  _whenOpen() {
    if (this.state === "closed") return Promise.reject(this.closedError);
    if (isOpen(this._ws)) return Promise.resolve(this._ws);
    return new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
  }

  /** Send a request once a socket is open; a failure settles the request's promise. */
  async _sendPending(pending) {
    try {
      for (;;) {
        const ws = await this._whenOpen();
        if (pending.settled) return; // timed out while we waited: never send it late
        if (!isOpen(ws) || ws !== this._ws) continue;
        this._budget.spend();
        ws.send(encodeFrame(pending.frame));
        pending.generation = this.generation;
        return;
      }
    } catch (err) {
      this._router.requests.settle(pending.frame.id, err);
    }
  }

  _sendOptional(frame, force = false) {
    if (!isOpen(this._ws) || (!force && !this._budget.takeOptional())) return false;
    this._ws.send(encodeFrame(frame));
    return true;
  }

  async _exchange(frame, timeoutMs = this._requestTimeoutMs) {
    const requests = this._router.requests;
    const pending = requests.add(frame);
    let timer = null;
    if (timeoutMs !== null) {
      timer = setTimeout(() => requests.settle(frame.id, new RequestTimeout(`no answer to ${frame.t} within ${timeoutMs} ms`)), timeoutMs);
    }
    try {
      this._sendPending(pending);
      await pending.promise;
      return pending;
    } finally {
      clearTimeout(timer);
    }
  }

  async _request(frame, timeoutMs) {
    return (await this._exchange(frame, timeoutMs)).promise;
  }

  // --- turns and events ------------------------------------------------------

  _newTurn(id, mine) {
    return new Turn(id, {
      mine,
      seen: (turn) => this._seen.want(turn),
      interrupt: (turn, shown) => this._interruptTurn(turn, shown),
    });
  }

  async _interruptTurn(turn, shown) {
    try {
      await this._request({ t: "interrupt", turn: turn.id, shown });
    } catch (err) {
      if (!(err?.code === ErrorCode.UNKNOWN_TURN && turn.ended)) throw err;
    }
  }

  // --- tools ---------------------------------------------------------------

  _newToolCall(frame, turn) {
    // The turn's speaker answers: this client's say, or a turn of this player (a game-caused one).
    const speaker = turn !== null && (turn.mine || (turn.player !== null && turn.player === this.player));
    return new ToolCall(frame, {
      forMe: frame.answered_by === "client" && speaker,
      answer: (call, result) => this._sendToolResult(call.call, result),
    });
  }

  async _sendToolResult(call, result) {
    try {
      await this._request({ t: "tool.result", call, result: result === undefined ? null : result });
      return true;
    } catch (err) {
      if (err instanceof NpcError && err.code === ErrorCode.UNKNOWN_CALL) return false; // too late
      throw err;
    }
  }

  _tool(call, turn) {
    const heard = this.emit("tool", call) || (turn?.listenerCount("tool") ?? 0) > 0;
    if (!call.forMe) return;
    const handler = this._toolHandlers.get(call.name);
    if (handler) this._runTool(handler, call).catch((err) => this._report(err));
    else if (!heard) {
      this._report(new NpcClientError(`the NPC asks this client's tool ${call.name} and nothing answers it (pass tools.${call.name} or listen to "tool"): the reply waits for the tool's timeout`));
    }
  }

  /** A `tools` handler answers; if it throws (or its result is refused) the NPC gets TOOL_ERROR_RESULT. */
  async _runTool(handler, call) {
    let result;
    try {
      result = await handler(call.args, call);
    } catch (err) {
      this._report(new NpcClientError(`tool ${call.name} failed: ${err?.message ?? err}; answered as an error`, { cause: err }));
      await call.answer(TOOL_ERROR_RESULT);
      return;
    }
    try {
      await call.answer(result);
    } catch (err) {
      if (err instanceof NpcClientError && !(err instanceof NpcError)) throw err; // closed, lost …
      this._report(new NpcClientError(`tool ${call.name}: its answer was refused (${err?.message ?? err}); answered as an error`, { cause: err }));
      await call.answer(TOOL_ERROR_RESULT);
    }
  }

  _event(frame) {
    if (!EVENT_FRAMES.has(frame.t)) return; // unknown server frames are ignored (v1: additions are optional)
    if (frame.t === "notice") {
      if (!this.emit("notice", frame.error)) this._report(frame.error);
      return;
    }
    const { seq: _seq, t, ...event } = frame;
    if (t === "draining") event.retryAfter = frame.retry_after ?? 1;
    this.emit(t, event);
  }

  /** A failure nobody asked for: the "error" listeners, else the console. */
  _report(error) {
    if (!this.emit("error", error)) {
      const log = globalThis.console;
      log?.warn?.(`npc-client: ${error?.message ?? error}`);
    }
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
