// Pacing: optional frames (`seen`, `typing`) under the server's inbound rate
// limit, and reconnect delays.

export const SEEN_INTERVAL_MS = 250;
export const TYPING_IDLE_MS = 3000;
export const TYPING_RESEND_MS = 5000;

/** A token bucket mirroring the server's `limits.rate_per_s` / `rate_burst`. */
export class RateBudget {
  constructor(rate = 20, burst = 40, now = () => Date.now()) {
    this.rate = Math.max(rate, 0.1);
    this.burst = Math.max(burst, 1);
    this._tokens = this.burst;
    this._now = now;
    this._stamp = now();
  }

  _refill() {
    const now = this._now();
    this._tokens = Math.min(this.burst, this._tokens + ((now - this._stamp) / 1000) * this.rate);
    this._stamp = now;
  }

  /** A request: always sent, it spends a token. */
  spend() {
    this._refill();
    this._tokens = Math.max(0, this._tokens - 1);
  }

  /** An optional frame (`seen`, `typing`): only while half the burst is left. */
  takeOptional() {
    this._refill();
    if (this._tokens < 1 + this.burst / 2) return false;
    this._tokens -= 1;
    return true;
  }
}

export const DEFAULT_BACKOFF = Object.freeze({
  initialMs: 100,
  maxMs: 10_000,
  factor: 2,
  giveUpAfterMs: 120_000, // the server's default resume window
});

/** After a 4029 close (rate limited) the backoff starts here: "a few seconds, growing". */
export const RATE_LIMITED_INITIAL_MS = 2000;
const RATE_LIMITED = 4029;

/** Reconnect delay for `attempt` (0-based): exponential, capped, times a random 0.5-1. */
export function backoffDelay(backoff, attempt, random = Math.random) {
  const base = Math.min(backoff.maxMs, backoff.initialMs * backoff.factor ** attempt);
  return base * (0.5 + random() / 2);
}

/**
 * The delay before reconnect `attempt` (0-based) after the close `code`:
 * `backoffDelay`, except that after 4029 (too many frames or connects) it
 * starts at RATE_LIMITED_INITIAL_MS at least, as docs/protocol.md asks.
 */
export function reconnectDelay(backoff, attempt, code, random = Math.random) {
  if (code !== RATE_LIMITED) return backoffDelay(backoff, attempt, random);
  const initialMs = Math.max(backoff.initialMs, RATE_LIMITED_INITIAL_MS);
  return backoffDelay({ ...backoff, initialMs, maxMs: Math.max(backoff.maxMs, initialMs) }, attempt, random);
}

/**
 * Sends `seen{turn, shown}` at most every SEEN_INTERVAL_MS, only when a turn's
 * displayed count grew, and only within the rate budget (`trySend` says no).
 */
export class SeenReporter {
  constructor(trySend, onSent) {
    this._trySend = trySend;
    this._onSent = onSent;
    this._dirty = new Map();
    this._timer = null;
  }

  want(turn) {
    this._dirty.set(turn.id, turn);
    if (this._timer === null) this._timer = setTimeout(() => this._flush(), SEEN_INTERVAL_MS);
  }

  stop() {
    clearTimeout(this._timer);
    this._timer = null;
    this._dirty.clear();
  }

  _flush() {
    this._timer = null;
    for (const turn of [...this._dirty.values()]) {
      const shown = turn.displayed;
      if (turn.ended || shown <= (turn._reported ?? 0)) {
        this._dirty.delete(turn.id); // after turn.end the server no longer listens
        continue;
      }
      if (!this._trySend({ t: "seen", turn: turn.id, shown })) break;
      this._dirty.delete(turn.id);
      turn._reported = shown;
      this._onSent();
    }
    if (this._dirty.size > 0) this._timer = setTimeout(() => this._flush(), SEEN_INTERVAL_MS);
  }
}

/**
 * "Typing" for one place (room and/or NPC) at a time: `on` once, again every
 * TYPING_RESEND_MS while keys keep coming, `off` after TYPING_IDLE_MS of quiet.
 */
export class TypingNotices {
  constructor(trySend) {
    this._trySend = trySend; // (frame, force) -> sent?
    this._current = null;
  }

  /** A keystroke in `where`; true if a frame went out. */
  keystroke({ room, npc } = {}, now = Date.now()) {
    const key = `${room ?? ""}\u0000${npc ?? ""}`;
    if (this._current && this._current.key !== key) this.stop();
    let sent = false;
    const current = this._current;
    if (!current || now - current.sentAt >= TYPING_RESEND_MS) {
      sent = this._trySend({ t: "typing", on: true, room, npc }, false);
      if (!sent && !current) return false;
      this._current = { key, room, npc, sentAt: sent ? now : current.sentAt, idle: current?.idle };
    }
    clearTimeout(this._current.idle);
    this._current.idle = setTimeout(() => this.stop(), TYPING_IDLE_MS);
    return sent;
  }

  /** Say "stopped typing" now, if "typing" was said. */
  stop() {
    const current = this._current;
    if (!current) return;
    this.cancel();
    this._trySend({ t: "typing", on: false, room: current.room, npc: current.npc }, true);
  }

  /** Forget the typing state without sending anything (the client closed). */
  cancel() {
    clearTimeout(this._current?.idle);
    this._current = null;
  }
}
