// The session's token: the one to send, a provider for new ones, and the
// timer that renews it before it expires. A JWT's `exp` (and `iat`) are read,
// never verified (that is the server's job).
//
// When to renew: `refreshMarginMs` before `exp`, but never more than a third
// of the token's lifetime before it (`exp - iat`, or since the client got the
// token when it has no `iat`), and never sooner than MIN_REFRESH_DELAY_MS
// after the previous renewal. A one-hour token is renewed 60 s before it
// expires; a 5 s token after about 3.3 s, not every second.

import { NpcClientError } from "./errors.js";

/** The margin is at most this part of the token's lifetime. */
export const REFRESH_FRACTION = 1 / 3;
/** Renewals are at least this far apart (and the first this long after a token arrived). */
export const MIN_REFRESH_DELAY_MS = 1000;
// setTimeout fires at once past 2^31 - 1 ms (24.8 days): longer waits go in steps.
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Time and timers; tests pass a fake one. */
export const SYSTEM_CLOCK = Object.freeze({
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (timer) => clearTimeout(timer),
});

/** `{exp, iat}` of a JWT in ms since the epoch (`iat` null when absent), or null without `exp`. */
export function tokenTimes(token) {
  if (typeof token !== "string") return null;
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part));
    if (typeof claims.exp !== "number") return null;
    return { exp: claims.exp * 1000, iat: typeof claims.iat === "number" ? claims.iat * 1000 : null };
  } catch {
    return null;
  }
}

/** When `token` expires, in ms since the epoch, or null if it says nothing. */
export function tokenExpiry(token) {
  return tokenTimes(token)?.exp ?? null;
}

/**
 * Milliseconds from `now` until a token should be renewed: `exp` minus the
 * smaller of `marginMs` and a third of its lifetime (from `issuedAt`), and at
 * least MIN_REFRESH_DELAY_MS.
 */
export function refreshDelay({ exp, issuedAt, now, marginMs }) {
  const lifetime = Math.max(0, exp - issuedAt);
  const margin = Math.min(marginMs, lifetime * REFRESH_FRACTION);
  return Math.max(MIN_REFRESH_DELAY_MS, exp - now - margin);
}

export class TokenKeeper {
  constructor(token, provider, refreshMarginMs, clock = SYSTEM_CLOCK) {
    this._clock = clock;
    this.token = token ?? null;
    this.provider = provider ?? null;
    this.expired = false; // the server closed with 4002: this token is done
    this._marginMs = refreshMarginMs;
    this._timer = null;
    this._epoch = 0; // bumped by stop(): a provider answering after it is ignored
  }

  get token() {
    return this._token;
  }

  set token(value) {
    this._token = value;
    this._receivedAt = this._clock.now();
  }

  get renewable() {
    return this.provider !== null;
  }

  /** The token for a `hello`: a new one from the provider if this one is expired or missing. */
  async forHello() {
    const expiry = tokenExpiry(this.token);
    const stale = this.expired || !this.token || (expiry !== null && expiry <= this._clock.now());
    if (stale && this.provider) this.token = await this.provider();
    this.expired = false;
    return this.token;
  }

  /** Milliseconds until the current token should be renewed, or null (no `exp`). */
  refreshIn() {
    const times = tokenTimes(this.token);
    if (times === null) return null;
    const issuedAt = times.iat ?? this._receivedAt;
    return refreshDelay({ exp: times.exp, issuedAt, now: this._clock.now(), marginMs: this._marginMs });
  }

  /**
   * With a provider, call `refresh(newToken)` when the token should be renewed
   * (see refreshDelay); `fail(error)` if the provider fails or hands back a
   * token that expires no later than the current one (that one is not sent:
   * the server's 4002 close then asks the provider again, for the resume).
   */
  schedule(refresh, fail) {
    this.stop();
    const delay = this.refreshIn();
    if (!this.provider || delay === null) return;
    const epoch = this._epoch;
    if (delay > MAX_TIMER_MS) {
      this._timer = this._clock.setTimeout(() => this.schedule(refresh, fail), MAX_TIMER_MS);
      return;
    }
    const expiry = tokenExpiry(this.token);
    this._timer = this._clock.setTimeout(() => {
      this._timer = null;
      Promise.resolve()
        .then(() => this.provider())
        .then((token) => {
          if (epoch !== this._epoch) return undefined; // stopped (or rescheduled) meanwhile
          const next = tokenExpiry(token);
          if (next !== null && next <= expiry) {
            throw new NpcClientError("tokenProvider returned a token that expires no later than the current one; not sent");
          }
          return refresh(token);
        })
        .catch((err) => {
          if (epoch === this._epoch) fail(err);
        });
    }, delay);
  }

  stop() {
    this._epoch += 1;
    if (this._timer !== null) this._clock.clearTimeout(this._timer);
    this._timer = null;
  }
}
