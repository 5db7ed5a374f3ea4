// Errors of the npc-server client. The tree:
//
//   NpcClientError
//    ├── NpcError                the server answered a request with `error` (`code`, `retryAfter`)
//    ├── ConnectionClosedError   the connection is closed for good (`code`, `reason`, `reconnectable`)
//    ├── ServerUnreachable       no WebSocket could be opened (`url`, `cause`)
//    ├── RequestLost             the session was replaced before the server answered
//    ├── RequestTimeout          no answer within `requestTimeout`
//    └── ProtocolError           the server sent something protocol v1 does not allow
//
// Error frames become exceptions in one place, `errorFromFrame`; close codes
// become `ConnectionClosedError` through `closedError`.

/** The wire error codes of protocol v1. */
export const ErrorCode = Object.freeze({
  BAD_FRAME: "bad_frame",
  UNKNOWN_TYPE: "unknown_type",
  TOO_LONG: "too_long",
  UNKNOWN_NPC: "unknown_npc",
  UNKNOWN_TURN: "unknown_turn",
  UNKNOWN_ACTION: "unknown_action",
  NOT_IN_ROOM: "not_in_room",
  RATE_LIMITED: "rate_limited",
  BUSY: "busy",
  BACKEND_ERROR: "backend_error",
  FORBIDDEN: "forbidden",
  BAD_TOKEN: "bad_token",
  /** Cluster mode: the request needs the cluster's Redis, out of reach now; has `retry_after`. */
  UNAVAILABLE: "unavailable",
  /** A `tool.result` for a call that is not waiting for this player's answer. */
  UNKNOWN_CALL: "unknown_call",
});

/** The close codes of protocol v1. */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  MESSAGE_TOO_BIG: 1009,
  /** The server refused the WebSocket handshake (a wrong path: seen as HTTP 403). */
  POLICY_VIOLATION: 1008,
  INTERNAL_ERROR: 1011,
  SLOW_CONSUMER: 4000,
  HEARTBEAT_TIMEOUT: 4001,
  TOKEN_EXPIRED: 4002,
  RATE_LIMITED: 4029,
  AUTH_FAILED: 4500,
  PROTOCOL_VIOLATION: 4501,
  REPLACED: 4503,
  /** The game server kicked the player (`POST /api/kick`): do not reconnect. */
  KICKED: 4508,
  TOO_MANY_CONNECTIONS: 4513,
});

/**
 * docs/protocol.md's client policy: 4000-4499 and 1001/1006/1011 reconnect;
 * 4500-4999 (4508 kicked among them) and anything else stop. A 4002 reconnects
 * only with a new token (the client needs a `tokenProvider`).
 */
export function shouldReconnect(code) {
  if (code >= 4000 && code <= 4499) return true;
  if (code >= 4500 && code <= 4999) return false;
  return code === 1001 || code === 1006 || code === 1011;
}

export class NpcClientError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** An `error` frame: the server refused or failed a request. */
export class NpcError extends NpcClientError {
  constructor(code, message, { retryAfter = null, requestId = null } = {}) {
    super(`${code}: ${message}`);
    this.code = code;
    this.serverMessage = message;
    this.retryAfter = retryAfter;
    this.requestId = requestId;
  }
}

export class ConnectionClosedError extends NpcClientError {
  constructor(code, reason = "", { reconnectable } = {}) {
    super(`connection closed with code ${code}${reason ? `: ${reason}` : ""}`);
    this.code = code;
    this.reason = reason;
    this.reconnectable = reconnectable ?? shouldReconnect(code);
  }
}

export class ServerUnreachable extends NpcClientError {
  constructor(url, cause) {
    super(`cannot reach server at ${url}: ${cause}`);
    this.url = url;
    this.cause = cause;
  }
}

/** The session was replaced before the server answered; the request may or may not have run. */
export class RequestLost extends NpcClientError {}

export class RequestTimeout extends NpcClientError {}

export class ProtocolError extends NpcClientError {}

/** The exception for an `error` frame. */
export function errorFromFrame(frame) {
  const code = typeof frame.code === "string" && frame.code ? frame.code : "unknown";
  const message = typeof frame.message === "string" ? frame.message : "";
  const retryAfter = typeof frame.retry_after === "number" ? frame.retry_after : null;
  const requestId = typeof frame.id === "string" || typeof frame.id === "number" ? frame.id : null;
  return new NpcError(code, message, { retryAfter, requestId });
}
