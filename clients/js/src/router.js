// The client's protocol state, sans I/O: seq tracking, requests, turns, actions, tool calls.
//
// `Router.receive()` takes one decoded server frame and never awaits: it drops
// frames already processed (by seq), settles pending requests, feeds Turn and
// Action handles and hands everything else to the client through callbacks.

import { errorFromFrame } from "./errors.js";
import { Action, LOST, ToolCall, Turn } from "./turn.js";

export class Requests {
  constructor() {
    this._prefix = Math.random().toString(36).slice(2, 8);
    this._counter = 0;
    this._pending = new Map();
  }

  /** Give `frame` a fresh id and remember it until it is answered. */
  add(frame) {
    this._counter += 1;
    const id = `${this._prefix}-${this._counter}`;
    frame.id = id;
    const pending = { frame, generation: -1, turn: null, settled: false };
    pending.promise = new Promise((resolve, reject) => {
      pending.resolve = resolve;
      pending.reject = reject;
    });
    this._pending.set(id, pending);
    return pending;
  }

  get(id) {
    return typeof id === "string" ? this._pending.get(id) : undefined;
  }

  settle(id, error, frame) {
    const pending = this.get(id);
    if (!pending || pending.settled) return false;
    pending.settled = true;
    this._pending.delete(id);
    if (error) pending.reject(error);
    else pending.resolve(frame);
    return true;
  }

  /** Unanswered requests last sent on a socket older than `generation`. */
  sentBefore(generation) {
    return [...this._pending.values()].filter((p) => p.generation >= 0 && p.generation < generation);
  }

  failAll(error) {
    for (const id of [...this._pending.keys()]) this.settle(id, error);
  }
}

export class Router {
  constructor({ newTurn, answer, onForeignTurn, onEvent, toolCall, onTool }) {
    this.requests = new Requests();
    this.turns = new Map();
    this.actions = new Map();
    this.tools = new Map(); // open tool calls by call id
    this.lastSeq = 0;
    this.duplicates = 0;
    this.gaps = 0;
    this._newTurn = newTurn;
    this._answer = answer;
    this._onForeignTurn = onForeignTurn;
    this._onEvent = onEvent;
    this._toolCall = toolCall ?? ((frame) => new ToolCall(frame, { forMe: false, answer: async () => false }));
    this._onTool = onTool ?? (() => {});
    this._byRequest = new Map();
    this._unconfirmed = new Set();
    this._handlers = {
      ack: (f) => this._ack(f),
      pong: (f) => this.requests.settle(f.id, null, f),
      error: (f) => this._error(f),
      "turn.start": (f) => this._turnStart(f),
      delta: (f) => this._delta(f),
      action: (f) => this._action(f),
      "action.end": (f) => this._actionEnd(f),
      "turn.end": (f) => this._turnEnd(f),
      tool: (f) => this._tool(f),
      "tool.end": (f) => this._toolEnd(f),
    };
  }

  /** Process one server frame (not `welcome` or a server `ping`). */
  receive(frame) {
    if (Number.isInteger(frame.seq)) {
      if (frame.seq <= this.lastSeq) {
        this.duplicates += 1;
        return;
      }
      if (frame.seq !== this.lastSeq + 1) this.gaps += 1;
      this.lastSeq = frame.seq;
    }
    const handler = this._handlers[frame.t];
    if (handler) handler(frame);
    else this._onEvent(frame);
  }

  newestOpenTurn(npc) {
    let found = null;
    for (const turn of this.turns.values()) {
      if (!turn.ended && (npc === undefined || turn.npc === npc)) found = turn;
    }
    return found;
  }

  /** `welcome{resumed:false}`: seq starts over and a snapshot of active turns follows. */
  newSession(seq) {
    this.lastSeq = seq;
    this._unconfirmed = new Set([...this.turns.values()].filter((t) => t.started).map((t) => t.id));
  }

  /** After a new session's snapshot: end the turns it did not list, expire their open actions. */
  snapshotDone() {
    const lost = [...this._unconfirmed].map((id) => this.turns.get(id)).filter(Boolean);
    this._unconfirmed = new Set();
    for (const turn of lost) this._endTurn(turn, LOST, turn.received, null, null);
    const expired = [];
    for (const action of [...this.actions.values()]) {
      if (this.turns.has(action.turn)) continue; // its turn goes on in the new session
      this.actions.delete(action.id);
      action.lost = true;
      if (action._end("expired")) expired.push(action);
    }
    for (const call of [...this.tools.values()]) {
      if (this.turns.has(call.turn)) continue;
      this.tools.delete(call.call);
      call._end(LOST);
    }
    return { lost, expired };
  }

  /** The client closed for good: every waiter learns it. */
  failAll(error) {
    this.requests.failAll(error);
    for (const turn of this.turns.values()) turn._fail(error);
  }

  _ack(frame) {
    const pending = this.requests.get(frame.id);
    if (pending && typeof frame.turn === "string") {
      const turn = this.turns.get(frame.turn) ?? this._openTurn(frame.turn, true);
      turn.queued = Number.isInteger(frame.queued) ? frame.queued : null;
      this._byRequest.set(frame.id, turn);
      pending.turn = turn;
    }
    this.requests.settle(frame.id, null, frame);
  }

  _error(frame) {
    const error = errorFromFrame(frame);
    if (this.requests.settle(frame.id, error)) return;
    const turn = this._byRequest.get(frame.id);
    if (turn) {
      turn.error = error; // e.g. backend_error: its turn.end (reason "error") follows
      return;
    }
    this._onEvent({ t: "notice", error });
  }

  _openTurn(id, mine) {
    const turn = this._newTurn(id, mine);
    this.turns.set(id, turn);
    return turn;
  }

  _turnStart(frame) {
    const id = String(frame.turn);
    this._unconfirmed.delete(id);
    let turn = this.turns.get(id);
    const created = !turn;
    if (!turn) turn = this._adopt(id, frame.reply_to);
    turn._feedStart(frame);
    if (created && !turn.mine) this._onForeignTurn(turn);
  }

  // A say whose ack was lost with a replaced session shows up in the snapshot
  // as a turn replying to its id: it is ours after all.
  _adopt(id, replyTo) {
    const pending = this.requests.get(replyTo);
    if (!pending || pending.frame.t !== "say") return this._openTurn(id, false);
    const turn = this._openTurn(id, true);
    this._byRequest.set(replyTo, turn);
    pending.turn = turn;
    this.requests.settle(replyTo, null, { t: "ack", id: replyTo, turn: id });
    return turn;
  }

  _delta(frame) {
    const turn = this.turns.get(String(frame.turn));
    if (turn && typeof frame.text === "string" && Number.isInteger(frame.at)) {
      turn._feedText(frame.text, frame.at);
    }
  }

  _action(frame) {
    const turn = this.turns.get(String(frame.turn));
    if (!turn || typeof frame.action !== "string") return;
    const action = new Action(frame, this._answer);
    this.actions.set(action.id, action);
    turn._feedAction(action);
  }

  _actionEnd(frame) {
    const action = this.actions.get(String(frame.action));
    if (!action) return;
    this.actions.delete(action.id);
    action._end(String(frame.status));
  }

  _turnEnd(frame) {
    const turn = this.turns.get(String(frame.turn));
    if (!turn) return;
    const chars = Number.isInteger(frame.chars) ? frame.chars : turn.received;
    const kept = Number.isInteger(frame.kept) ? frame.kept : null;
    this._endTurn(turn, String(frame.reason), chars, kept, frame.usage);
  }

  _tool(frame) {
    if (typeof frame.call !== "string" || this.tools.has(frame.call)) return;
    const turn = this.turns.get(String(frame.turn)) ?? null;
    const call = this._toolCall(frame, turn);
    this.tools.set(call.call, call);
    turn?._feedTool(call);
    this._onTool(call, turn);
  }

  _toolEnd(frame) {
    if (typeof frame.call !== "string") return;
    const call = this.tools.get(frame.call);
    if (call) {
      this.tools.delete(call.call);
      call._end(String(frame.status));
    }
    this._onEvent(frame);
  }

  _endTurn(turn, reason, chars, kept, usage) {
    // tool.end comes before turn.end; a call still open here was lost with its frames.
    for (const call of turn.tools) {
      if (this.tools.get(call.call) !== call) continue;
      this.tools.delete(call.call);
      call._end(reason === LOST ? LOST : "cancelled");
    }
    turn._feedEnd(reason, chars, kept, usage);
    this.turns.delete(turn.id);
    for (const [id, t] of this._byRequest) if (t === turn) this._byRequest.delete(id);
  }
}
