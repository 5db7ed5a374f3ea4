// A tiny event emitter. A listener that throws does not stop the others and
// is not swallowed: its error is reported asynchronously, as EventTarget does.

export class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  /** Call `listener` on each `event`; returns a function that removes it. */
  on(event, listener) {
    if (typeof listener !== "function") throw new TypeError("listener must be a function");
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => set.delete(listener);
  }

  /** How many listeners `event` has. */
  listenerCount(event) {
    return this._listeners.get(event)?.size ?? 0;
  }

  emit(event, ...args) {
    const set = this._listeners.get(event);
    if (!set) return false;
    for (const listener of [...set]) {
      try {
        listener(...args);
      } catch (err) {
        reportListenerError(err);
      }
    }
    return set.size > 0;
  }
}

function reportListenerError(err) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(err);
  else setTimeout(() => { throw err; }, 0);
}
