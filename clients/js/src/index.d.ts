// Type declarations of the npc-server JavaScript client (hand-written; the
// code is plain ES modules so a page can import it without a build step).

/** This package's version. */
export declare const VERSION: string;
/** The wire protocol it speaks: npc-server protocol v1. */
export declare const PROTOCOL_VERSION: 1;
/** Client-side end reason: the session was replaced and the server no longer knew the turn. */
export declare const LOST: "lost";

export type ErrorCodeValue =
  | "bad_frame"
  | "unknown_type"
  | "too_long"
  | "unknown_npc"
  | "unknown_turn"
  | "unknown_action"
  | "not_in_room"
  | "rate_limited"
  | "busy"
  | "backend_error"
  | "forbidden"
  | "bad_token"
  | "unavailable"
  | "unknown_call";

export declare const ErrorCode: {
  readonly BAD_FRAME: "bad_frame";
  readonly UNKNOWN_TYPE: "unknown_type";
  readonly TOO_LONG: "too_long";
  readonly UNKNOWN_NPC: "unknown_npc";
  readonly UNKNOWN_TURN: "unknown_turn";
  readonly UNKNOWN_ACTION: "unknown_action";
  readonly NOT_IN_ROOM: "not_in_room";
  readonly RATE_LIMITED: "rate_limited";
  readonly BUSY: "busy";
  readonly BACKEND_ERROR: "backend_error";
  readonly FORBIDDEN: "forbidden";
  readonly BAD_TOKEN: "bad_token";
  /** Cluster mode: the request needs the cluster's Redis, out of reach now; has `retryAfter`. */
  readonly UNAVAILABLE: "unavailable";
  /** A tool answer for a call that does not wait for it (`answer()` resolves false instead). */
  readonly UNKNOWN_CALL: "unknown_call";
};

export declare const CloseCode: {
  readonly NORMAL: 1000;
  readonly GOING_AWAY: 1001;
  readonly ABNORMAL: 1006;
  /** The handshake was refused (a wrong path; seen as HTTP 403). */
  readonly POLICY_VIOLATION: 1008;
  readonly MESSAGE_TOO_BIG: 1009;
  readonly INTERNAL_ERROR: 1011;
  readonly SLOW_CONSUMER: 4000;
  readonly HEARTBEAT_TIMEOUT: 4001;
  readonly TOKEN_EXPIRED: 4002;
  readonly RATE_LIMITED: 4029;
  readonly AUTH_FAILED: 4500;
  readonly PROTOCOL_VIOLATION: 4501;
  readonly REPLACED: 4503;
  /** The game server kicked the player (`POST /api/kick`), or banned them (the close reason says for how long): the client does not reconnect. */
  readonly KICKED: 4508;
  readonly TOO_MANY_CONNECTIONS: 4513;
};

/** docs/protocol.md's policy: 4000-4499 and 1001/1006/1011 reconnect; 4500-4999 (4508 kicked too) and the rest stop. */
export declare function shouldReconnect(code: number): boolean;
/** Length in Unicode code points, the unit of the wire's `at`, `chars`, `kept` and `shown`. */
export declare function codePoints(text: string): number;

export declare class NpcClientError extends Error {}

/** An `error` frame: the server refused or failed a request. */
export declare class NpcError extends NpcClientError {
  readonly code: ErrorCodeValue | (string & {});
  /** The server's explanation. */
  readonly serverMessage: string;
  /** Seconds to wait, for `rate_limited`, `busy` and `unavailable`. */
  readonly retryAfter: number | null;
  readonly requestId: string | number | null;
}

/** The connection is closed for good. */
export declare class ConnectionClosedError extends NpcClientError {
  /** The WebSocket close code; 1006 when it dropped without one. */
  readonly code: number;
  readonly reason: string;
  /** Whether the protocol would allow a reconnect (false for 1000 and 4500-4999). */
  reconnectable: boolean;
}

/** No WebSocket could be opened to `url`. */
export declare class ServerUnreachable extends NpcClientError {
  readonly url: string;
  readonly cause: string;
}

/** The session was replaced before the server answered; the request may or may not have run. */
export declare class RequestLost extends NpcClientError {}
/** No answer within `requestTimeoutMs`. */
export declare class RequestTimeout extends NpcClientError {}
/** The server sent something protocol v1 does not allow. */
export declare class ProtocolError extends NpcClientError {}

export type TurnEndReason = "done" | "interrupted" | "superseded" | "error" | "timeout" | "lost";
export type ActionStatus = "accepted" | "declined" | "expired" | "done" | "retracted";
/** How a tool call ended; "lost" (client-side): its turn was lost with a replaced session. */
export type ToolStatus = "answered" | "timeout" | "cancelled" | "error" | "lost";
export type ConnectionState = "idle" | "connecting" | "open" | "resuming" | "closed";

/** Remove the listener. */
export type Unsubscribe = () => void;

export interface TurnEnd {
  reason: TurnEndReason | (string & {});
  /** Characters the server sent. */
  chars: number;
  /** Characters the NPC remembers saying (null for a lost turn). */
  kept: number | null;
  usage: { prompt?: number; completion?: number } | null;
  /** The error frame (e.g. backend_error) that ended the turn, if any. */
  error: NpcError | null;
}

/** Something the NPC does at character `at` of its turn (emote, give item, open shop …). */
export declare class Action {
  readonly id: string;
  readonly turn: string;
  readonly name: string;
  readonly args: Record<string, unknown>;
  readonly at: number;
  /** Whether it waits for `accept()` or `decline()`. */
  readonly approval: boolean;
  /** null while open. */
  readonly status: ActionStatus | null;
  /** True when the client expired it: its session was lost (after a failed resume). */
  readonly lost: boolean;
  /** Resolves with the final status. */
  readonly done: Promise<ActionStatus>;
  accept(): Promise<void>;
  decline(): Promise<void>;
  on(event: "end", listener: (status: ActionStatus) => void): Unsubscribe;
}

/** What a `tools` handler that throws is answered with (the server's words for a failed call). */
export declare const TOOL_ERROR_RESULT: { readonly error: string };

/**
 * A question the NPC asks mid-reply (its `[[tools]]`); the turn's text waits
 * until the call ends (`tool.end`). With `answeredBy === "client"` the turn's
 * speaker answers it: `forMe` says whether that is this client's player.
 */
export declare class ToolCall {
  /** The call id (the wire's `call`). */
  readonly call: string;
  /** Same as `call`. */
  readonly id: string;
  /** The turn's id. */
  readonly turn: string;
  readonly name: string;
  readonly args: Record<string, unknown>;
  readonly answeredBy: "client" | "game" | (string & {});
  /** This client's player is to answer it (answered by the client, and the turn's speaker). */
  readonly forMe: boolean;
  /** null while open. */
  readonly status: ToolStatus | (string & {}) | null;
  /** The server took this client's answer. */
  readonly answered: boolean;
  /** Resolves with how the call ended. */
  readonly done: Promise<ToolStatus | (string & {})>;
  /**
   * Answer with `result` (JSON-like, at most 4 levels deep, string map keys).
   * True when the server took it; false when the call no longer waits for it
   * (ended, timed out, answered already, or someone else's: `unknown_call`).
   * Rejects with NpcError when the server refuses the result (e.g. `bad_frame`).
   */
  answer(result: unknown): Promise<boolean>;
  on(event: "end", listener: (status: ToolStatus | (string & {})) => void): Unsubscribe;
}

/** `tool.end`: a tool call is over; the turn's text goes on (unless cancelled). */
export interface ToolEnd {
  call: string;
  status: ToolStatus | (string & {});
  turn?: string;
}

/**
 * Answers a tool the NPC asks this client; its result (or its promise's) is
 * sent as `tool.result`. If it throws, the call is answered with
 * TOOL_ERROR_RESULT and the error goes to the client's "error" event.
 */
export type ToolHandler = (args: Record<string, unknown>, call: ToolCall) => unknown;

/**
 * One NPC turn. Iterate it (`for await`) for its text pieces; actions come as
 * "action" events. Iterating throws ConnectionClosedError only when the
 * client closed for good before the turn ended.
 */
export declare class Turn implements AsyncIterable<string> {
  readonly id: string;
  /** Started by this client's say (false for room turns of others and snapshots). */
  readonly mine: boolean;
  readonly npc: string | null;
  readonly player: string | null;
  readonly room: string | null;
  readonly replyTo: string | number | null;
  /** "game" for a turn the game server started (`POST /api/say`): it answers no say. */
  readonly causedBy: "game" | (string & {}) | null;
  /** The game's event name (e.g. "theft") of a game-caused turn, when it gave one. */
  readonly event: string | null;
  /** Place in line when the NPC was busy. */
  readonly queued: number | null;
  readonly started: boolean;
  readonly ended: boolean;
  readonly reason: TurnEndReason | (string & {}) | null;
  readonly chars: number | null;
  readonly kept: number | null;
  readonly error: NpcError | null;
  readonly actions: readonly Action[];
  /** The tool calls of this turn. */
  readonly tools: readonly ToolCall[];
  /** All text received so far. */
  readonly text: string;
  /** Code points received. */
  readonly received: number;
  /** Code points the iterator yielded. */
  readonly consumed: number;
  /** What the server is told the player saw: the last `seen()`, else `consumed`. */
  readonly displayed: number;
  /** Resolves when the turn ends; rejects with ConnectionClosedError if the client closed first. */
  readonly done: Promise<TurnEnd>;
  [Symbol.asyncIterator](): AsyncIterator<string>;
  /** Consume the rest; all text the iterator yielded. */
  readAll(): Promise<string>;
  /** The player has seen `shown` code points (a typewriter lagging the stream); rate-bounded. */
  seen(shown: number): void;
  /** Stop the turn; nothing more is yielded. `shown` defaults to `displayed`. */
  interrupt(shown?: number): Promise<void>;
  on(event: "start", listener: (turn: Turn) => void): Unsubscribe;
  on(event: "text", listener: (text: string, at: number) => void): Unsubscribe;
  on(event: "action", listener: (action: Action) => void): Unsubscribe;
  /** The NPC asks a tool; its text waits until the call ends. */
  on(event: "tool", listener: (call: ToolCall) => void): Unsubscribe;
  on(event: "end", listener: (end: TurnEnd) => void): Unsubscribe;
  on(event: "error", listener: (error: ConnectionClosedError) => void): Unsubscribe;
}

/** The part of a WebSocket the client uses: the browser's, Node's or the `ws` package's. */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: any) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;
export type TokenProvider = () => string | Promise<string>;

export interface Backoff {
  initialMs?: number;
  maxMs?: number;
  factor?: number;
  /** Stop reconnecting after this long (null: never). Default 120 000, the resume window. */
  giveUpAfterMs?: number | null;
}

export interface ConnectOptions {
  /** ws(s)://host:port/ws */
  url: string;
  /** A JWT; or leave it out and pass `tokenProvider`. */
  token?: string;
  /** Called for a new token after a 4002 close and before the token expires (then sent as `refresh`):
   *  `refreshMarginMs` before `exp`, at most a third of the token's lifetime before it, at least 1 s apart. */
  tokenProvider?: TokenProvider;
  /** Default: globalThis.WebSocket (browsers, Node 22+). On Node 20 pass the `ws` package. */
  WebSocket?: WebSocketConstructor | (new (url: string) => unknown);
  /** Reconnect and resume after a drop (default true). */
  reconnect?: boolean;
  backoff?: Backoff;
  requestTimeoutMs?: number | null;
  openTimeoutMs?: number;
  /** Refresh this long before the token's `exp` (default 60 000), at most a third of its lifetime. */
  refreshMarginMs?: number;
  /** Handlers for the tools the NPCs ask this client (`answered_by = "client"`), by tool name. */
  tools?: Record<string, ToolHandler>;
  clientName?: string;
}

export interface StateChange {
  state: ConnectionState;
  /** The close code that caused it (resuming, closed). */
  code: number | null;
  reason: string | null;
}

export interface Said {
  room: string;
  player: string;
  npc: string;
  text: string;
}
export interface Typing {
  player: string;
  on: boolean;
  room?: string;
  npc?: string;
}
export interface Presence {
  room: string;
  player: string;
  state: "joined" | "left";
}
/** Who is in the room, after this client joined it ("presence" events are the changes
 *  after it); `partial`: in a cluster, a server did not answer in time. */
export interface Members {
  room: string;
  members: string[];
  partial?: boolean;
}
/** Cluster mode: room talk other servers published (said, typing, presence) before this
 *  may not all have arrived (their link to Redis was down). */
export interface RoomGap {
  room: string;
}
export interface Draining {
  retryAfter: number;
}
export interface Welcome {
  resumed: boolean;
  reconnected: boolean;
  session: string;
}
export interface Resync {
  /** Turns the new session did not list: ended with reason "lost". */
  lostTurns: Turn[];
  /** Open actions of the lost session: now "expired", `lost` true. */
  expiredActions: Action[];
}
export interface Retry {
  attempt: number;
  /** Why the attempt failed: ServerUnreachable, ConnectionClosedError, a token provider's error … */
  error: Error;
}

export interface ServerInfo {
  name: string;
  version: string;
  node: string;
}

export interface ClientStatistics {
  connects: number;
  resumed: number;
  newSessions: number;
  reconnectAttempts: number;
  frames: number;
  duplicates: number;
  gaps: number;
  pingsAnswered: number;
  seenSent: number;
  refreshes: number;
}

export declare class NpcClient {
  constructor(options: ConnectOptions);
  readonly url: string;
  readonly clientName: string;
  readonly state: ConnectionState;
  readonly closeCode: number | null;
  readonly closeReason: string | null;
  readonly closedError: ConnectionClosedError | null;
  readonly session: string | null;
  readonly player: string | null;
  readonly server: ServerInfo | null;
  readonly limits: Record<string, number>;
  /** The server's heartbeat, seconds. */
  readonly heartbeat: number | null;
  /** The last `ping()`'s round trip, ms (fractional). */
  readonly latencyMs: number | null;
  /** Turns not yet ended. */
  readonly turns: Turn[];

  /** The first connection; rejects with ServerUnreachable, ConnectionClosedError (e.g. 4500) … */
  open(): Promise<void>;
  /** Close for good with 1000 (the server forgets the session). */
  close(): void;
  /** Resolves when closed by close(); rejects with the ConnectionClosedError otherwise. */
  wait(): Promise<void>;
  statistics(): ClientStatistics;

  /** Speak to an NPC; the turn's handle once the server acks. */
  say(npc: string, text: string, options?: { room?: string }): Promise<Turn>;
  /** Stop `turn` (default: the newest open one). */
  interrupt(turn?: Turn, shown?: number): Promise<void>;
  act(action: Action | string, accept: boolean): Promise<void>;
  join(room: string): Promise<void>;
  leave(room: string): Promise<void>;
  context(data: Record<string, unknown>, options?: { npc?: string }): Promise<void>;
  refresh(token: string): Promise<void>;
  /** Answer a tool call (or its id); false when it no longer waits for this answer (`unknown_call`). */
  answerTool(call: ToolCall | string, result: unknown): Promise<boolean>;
  /** Round trip to the server and back, ms (fractional: loopback is well under one). */
  ping(): Promise<number>;
  /** Call on every keystroke; debounced under the server's rate limit. True if a frame went out. */
  typing(where?: { room?: string; npc?: string }): boolean;
  stopTyping(): void;

  on(event: "state", listener: (change: StateChange) => void): Unsubscribe;
  on(event: "welcome", listener: (welcome: Welcome) => void): Unsubscribe;
  on(event: "resync", listener: (resync: Resync) => void): Unsubscribe;
  on(event: "retry", listener: (retry: Retry) => void): Unsubscribe;
  on(event: "closed", listener: (error: ConnectionClosedError) => void): Unsubscribe;
  /** Turns this client did not start: room turns of other players, turns the game started (`causedBy`). */
  on(event: "turn", listener: (turn: Turn) => void): Unsubscribe;
  /** Every tool call of a turn this client sees; answer it if `forMe` (or pass `tools`). */
  on(event: "tool", listener: (call: ToolCall) => void): Unsubscribe;
  on(event: "tool.end", listener: (end: ToolEnd) => void): Unsubscribe;
  on(event: "said", listener: (said: Said) => void): Unsubscribe;
  on(event: "typing", listener: (typing: Typing) => void): Unsubscribe;
  on(event: "presence", listener: (presence: Presence) => void): Unsubscribe;
  on(event: "members", listener: (members: Members) => void): Unsubscribe;
  on(event: "room.gap", listener: (gap: RoomGap) => void): Unsubscribe;
  on(event: "draining", listener: (draining: Draining) => void): Unsubscribe;
  /** An error frame that answers no request (e.g. rate_limited); without listeners it goes to "error". */
  on(event: "notice", listener: (error: NpcError) => void): Unsubscribe;
  /** Failures nobody awaited (a failed refresh, a bad server message); without listeners, console.warn. */
  on(event: "error", listener: (error: Error) => void): Unsubscribe;
}

/** Open a session: connect, send hello, wait for welcome. The first connect is not retried. */
export declare function connect(options: ConnectOptions): Promise<NpcClient>;
