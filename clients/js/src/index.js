// npc-server client for web games and Node: protocol v1 over a WebSocket
// carrying msgpack frames.

export { NpcClient, PROTOCOL_VERSION, VERSION, connect } from "./client.js";
export { Action, LOST, TOOL_ERROR_RESULT, ToolCall, Turn, codePoints } from "./turn.js";
export {
  CloseCode,
  ConnectionClosedError,
  ErrorCode,
  NpcClientError,
  NpcError,
  ProtocolError,
  RequestLost,
  RequestTimeout,
  ServerUnreachable,
  shouldReconnect,
} from "./errors.js";
