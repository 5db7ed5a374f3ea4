// Pacing under the server's inbound rate limit, and reconnect delays.

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

/** Reconnect delay for `attempt` (0-based): exponential, capped, times a random 0.5-1. */
export function backoffDelay(backoff, attempt, random = Math.random) {
  const base = Math.min(backoff.maxMs, backoff.initialMs * backoff.factor ** attempt);
  return base * (0.5 + random() / 2);
}
