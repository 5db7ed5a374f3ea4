// The session's token: the one to send, a provider for new ones, and the
// timer that renews it before it expires. A JWT's `exp` is read, never
// verified (that is the server's job).

/** When `token` expires, in ms since the epoch, or null if it says nothing. */
export function tokenExpiry(token) {
  if (typeof token !== "string") return null;
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(part)).exp;
    return typeof exp === "number" ? exp * 1000 : null;
  } catch {
    return null;
  }
}

export class TokenKeeper {
  constructor(token, provider, refreshMarginMs) {
    this.token = token ?? null;
    this.provider = provider ?? null;
    this.expired = false; // the server closed with 4002: this token is done
    this._marginMs = refreshMarginMs;
    this._timer = null;
  }

  get renewable() {
    return this.provider !== null;
  }

  /** The token for a `hello`: a new one from the provider if this one is expired or missing. */
  async forHello() {
    const expiry = tokenExpiry(this.token);
    const stale = this.expired || !this.token || (expiry !== null && expiry <= Date.now());
    if (stale && this.provider) this.token = await this.provider();
    this.expired = false;
    return this.token;
  }

  /**
   * Call `refresh(newToken)` `refreshMarginMs` before the token expires (with
   * a provider); `fail(error)` if the provider fails.
   */
  schedule(refresh, fail) {
    this.stop();
    const expiry = tokenExpiry(this.token);
    if (!this.provider || expiry === null) return;
    const delay = Math.max(1000, expiry - Date.now() - this._marginMs);
    this._timer = setTimeout(() => {
      Promise.resolve().then(() => this.provider()).then(refresh, fail);
    }, delay);
  }

  stop() {
    clearTimeout(this._timer);
    this._timer = null;
  }
}
