// Handles for NPC turns and actions, fed by the client's frame router.
//
// A Turn is an async iterator of text pieces in the order the NPC spoke them;
// actions arrive as "action" events (and in `turn.actions`). It is fed
// synchronously (`_feed*`) and never does I/O itself: reporting `seen` and
// interrupting go through callbacks to the client. Text is placed by its
// offset `at` (Unicode code points, as the server counts), so a piece that
// arrives twice (after a resume, or in a snapshot) is yielded once, and only
// its new part.

import { Emitter } from "./emitter.js";

/** Client-side end reason: the session was replaced and the server no longer knew the turn. */
export const LOST = "lost";

/** Length in Unicode code points (the wire's unit), not UTF-16 units. */
export function codePoints(text) {
  let n = 0;
  for (const _ of text) n += 1;
  return n;
}

/** `text` without its first `n` code points. */
export function dropCodePoints(text, n) {
  if (n <= 0) return text;
  let i = 0;
  for (const ch of text) {
    if (n === 0) break;
    i += ch.length;
    n -= 1;
  }
  return text.slice(i);
}

/** The first `n` code points of `text`. */
export function takeCodePoints(text, n) {
  return text.slice(0, text.length - dropCodePoints(text, n).length);
}

/** What ends once with a status: `status` (null while open), `done` (resolves with it), "end". */
class Settles extends Emitter {
  constructor() {
    super();
    this.status = null;
    this._settle = null;
    this.done = new Promise((resolve) => (this._settle = resolve));
  }

  _end(status) {
    if (this.status !== null) return false;
    this.status = status;
    this._settle(status);
    this.emit("end", status);
    return true;
  }
}

/** Something the NPC does at character `at` of its turn (emote, give item, open shop …). */
export class Action extends Settles {
  constructor(frame, answer) {
    super();
    this.id = String(frame.action);
    this.turn = String(frame.turn ?? "");
    this.name = String(frame.name ?? "");
    this.args = frame.args && typeof frame.args === "object" ? { ...frame.args } : {};
    this.at = Number.isInteger(frame.at) ? frame.at : 0;
    this.approval = frame.approval === true;
    // `status`: null while open; then accepted, declined, expired, done or retracted.
    /** True when the client expired it itself: its session was lost with its answer. */
    this.lost = false;
    this._answer = answer;
  }

  /** Approve the action; resolves after the server's ack. */
  accept() {
    return this._answer(this, true);
  }

  /** Refuse the action; resolves after the server's ack. */
  decline() {
    return this._answer(this, false);
  }
}

/** What a client-answered tool call the handler threw on is answered with (the server's words
 * for a failed call, docs/game-server.md): the NPC goes on as after a failed call. */
export const TOOL_ERROR_RESULT = Object.freeze({ error: "the tool's answer is missing: error" });

/**
 * A question the NPC asks mid-reply (its `[[tools]]`); the turn's text waits
 * until the call ends. With `answeredBy === "client"` the turn's speaker
 * answers it (`forMe` says whether that is this client's player) with
 * `answer(result)`; `done` resolves with how the call ended.
 */
export class ToolCall extends Settles {
  constructor(frame, { forMe, answer }) {
    super();
    /** The call id (the wire's `call`). */
    this.call = String(frame.call);
    this.turn = String(frame.turn ?? "");
    this.name = String(frame.name ?? "");
    this.args = frame.args && typeof frame.args === "object" ? { ...frame.args } : {};
    /** "client" (the turn's speaker answers) or "game" (the game server does). */
    this.answeredBy = String(frame.answered_by ?? "game");
    /** Whether this client's player is the one to answer it. */
    this.forMe = forMe;
    // `status`: null while open; then answered, timeout, cancelled, error, or lost (client-side).
    /** True once the server took this client's answer. */
    this.answered = false;
    this._send = answer;
    this._claimed = false;
  }

  /** Same as `call`. */
  get id() {
    return this.call;
  }

  /**
   * Answer the call with `result` (JSON-like: at most 4 levels deep, string map
   * keys). Resolves true when the server took it, false when the call no longer
   * waits for it (it ended, timed out, was answered already, or asks someone
   * else: the server's `unknown_call`). Rejects with NpcError for a refused
   * result (e.g. `bad_frame`); then it may be answered again.
   */
  async answer(result) {
    if (this.status !== null || this.answeredBy !== "client" || this._claimed) return false;
    this._claimed = true;
    let taken;
    try {
      taken = await this._send(this, result);
    } catch (err) {
      if (this.status === null) this._claimed = false;
      throw err;
    }
    this.answered = taken;
    return taken;
  }
}

export class Turn extends Emitter {
  constructor(id, { mine, seen, interrupt }) {
    super();
    this.id = id;
    this.mine = mine;
    this.npc = null;
    this.player = null;
    this.room = null;
    this.replyTo = null;
    /** "game" for a turn the game server started (POST /api/say), else null. */
    this.causedBy = null;
    /** The game's event name (e.g. "theft") of a game-caused turn, when it gave one. */
    this.event = null;
    this.queued = null;
    this.started = false;
    this.reason = null;
    this.chars = null;
    this.kept = null;
    this.usage = null;
    /** The NpcError (backend_error …) that ended the turn, if any. */
    this.error = null;
    this.actions = [];
    /** The tool calls the NPC made in this turn. */
    this.tools = [];
    /** All text received so far. */
    this.text = "";
    this.received = 0;
    this.consumed = 0;
    this.shown = null;
    this._seen = seen;
    this._interrupt = interrupt;
    this._early = new Map();
    this._items = [];
    this._wake = null;
    this._stopping = false;
    this._failure = null;
    this._resolveDone = null;
    this._rejectDone = null;
    this.done = new Promise((resolve, reject) => {
      this._resolveDone = resolve;
      this._rejectDone = reject;
    });
    this.done.catch(() => {}); // a failure also reaches the iterator and `wait`-ers
  }

  get ended() {
    return this.reason !== null;
  }

  /** Text pieces until the turn ends; throws ConnectionClosedError if the client closed first. */
  async *[Symbol.asyncIterator]() {
    while (true) {
      while (this._items.length === 0 || this._stopping) {
        if (this._failure) throw this._failure;
        if (this.ended) return;
        await new Promise((resolve) => (this._wake = resolve));
      }
      const piece = this._items.shift();
      this.consumed = piece.at + codePoints(piece.text);
      if (this.shown === null) this._seen(this);
      yield piece.text;
    }
  }

  /** Consume the rest of the turn; all the text it yielded. */
  async readAll() {
    for await (const _ of this) {
      // the pieces are collected in `text`
    }
    return takeCodePoints(this.text, this.consumed);
  }

  /**
   * The player has seen `shown` characters (for a typewriter effect that lags
   * the stream). From the first call on, only these reports count as shown;
   * before it, what the iterator yielded does. Sent at a bounded rate.
   */
  seen(shown) {
    if (!Number.isInteger(shown) || shown < 0) throw new TypeError("shown must be an integer >= 0");
    this.shown = Math.max(this.shown ?? 0, Math.min(shown, this.received));
    this._seen(this);
  }

  /** What the server is told the player saw. */
  get displayed() {
    return this.shown ?? this.consumed;
  }

  /** Stop the turn; `shown` defaults to what was displayed. Nothing more is yielded. */
  async interrupt(shown) {
    if (this.ended) return;
    this._stopping = true; // hide what is buffered, unless the server refuses
    try {
      await this._interrupt(this, shown ?? this.displayed);
    } catch (err) {
      this._stopping = false;
      this._wakeUp();
      throw err;
    }
  }

  _wakeUp() {
    const wake = this._wake;
    this._wake = null;
    wake?.();
  }

  _feedStart(frame) {
    this.started = true;
    this.npc = frame.npc ?? this.npc;
    this.player = frame.player ?? this.player;
    this.room = frame.room ?? this.room;
    this.replyTo = frame.reply_to ?? this.replyTo;
    if (typeof frame.caused_by === "string") this.causedBy = frame.caused_by;
    if (typeof frame.event === "string") this.event = frame.event;
    this.emit("start", this);
  }

  _feedText(text, at) {
    if (this.ended || at + codePoints(text) <= this.received) return;
    if (codePoints(text) > codePoints(this._early.get(at) ?? "")) this._early.set(at, text);
    while (this._early.size > 0) {
      const first = Math.min(...this._early.keys());
      if (first > this.received) break; // a gap: wait for the text before it
      const piece = this._early.get(first);
      this._early.delete(first);
      this._accept(piece, first);
    }
  }

  _accept(text, at) {
    const fresh = dropCodePoints(text, this.received - at);
    if (!fresh) return;
    const piece = { text: fresh, at: this.received };
    this.text += fresh;
    this.received += codePoints(fresh);
    this._items.push(piece);
    this._wakeUp();
    this.emit("text", fresh, piece.at);
  }

  _feedAction(action) {
    this.actions.push(action);
    this.emit("action", action);
  }

  _feedTool(call) {
    this.tools.push(call);
    this.emit("tool", call);
  }

  _feedEnd(reason, chars, kept, usage) {
    if (this.ended) return;
    this.reason = reason;
    this.chars = chars;
    this.kept = kept;
    this.usage = usage && typeof usage === "object" ? { ...usage } : null;
    this._early.clear();
    this._wakeUp();
    const end = { reason, chars, kept, usage: this.usage, error: this.error };
    this._resolveDone(end);
    this.emit("end", end);
  }

  _fail(error) {
    if (this.ended || this._failure) return;
    this._failure = error;
    this._wakeUp();
    this._rejectDone(error);
    this.emit("error", error);
  }
}
