// Type-checked by `tsc --noEmit` (never run): the README's usage compiles.
import {
  type Action,
  CloseCode,
  ConnectionClosedError,
  ErrorCode,
  NpcError,
  PROTOCOL_VERSION,
  TOOL_ERROR_RESULT,
  type ToolCall,
  type ToolStatus,
  type Turn,
  connect,
} from "../src/index.js";

async function game(token: string): Promise<void> {
  const npc = await connect({ url: "ws://127.0.0.1:8700/ws", token, tokenProvider: async () => token });
  const v: 1 = PROTOCOL_VERSION;
  npc.on("state", ({ state, code }) => console.log(state, code ?? ""));
  npc.on("said", ({ player, text }) => console.log(player, text));
  npc.on("resync", ({ expiredActions }) => expiredActions.forEach((a: Action) => a.status));
  const turn: Turn = await npc.say("merchant", "hello", { room: "tavern" });
  turn.on("action", (action) => (action.approval ? action.accept() : undefined));
  for await (const text of turn) {
    const piece: string = text;
    turn.seen(turn.consumed);
    void piece;
  }
  const { reason, chars, kept } = await turn.done;
  await turn.interrupt(10);
  npc.typing({ room: "tavern" });
  await npc.context({ location: "inn" }, { npc: "merchant" });
  try {
    await npc.say("nobody", "hi");
  } catch (err) {
    if (err instanceof NpcError && err.code === "unknown_npc") console.log(err.serverMessage);
    if (err instanceof ConnectionClosedError) console.log(err.code, err.reconnectable);
  }
  console.log(v, reason, chars, kept);
  npc.close();
}
void game;

async function tools(token: string): Promise<void> {
  const npc = await connect({
    url: "ws://127.0.0.1:8700/ws",
    token,
    tools: {
      inventory: async (args: Record<string, unknown>, call: ToolCall) => ({ item: String(args.bag ?? call.name) }),
      glance: () => "a tree",
    },
  });
  npc.on("tool", async (call: ToolCall) => {
    const mine: boolean = call.forMe && call.answeredBy === "client";
    const taken: boolean = mine ? await call.answer({ sky: "grey" }) : await npc.answerTool(call.call, TOOL_ERROR_RESULT);
    const status: ToolStatus | string = await call.done;
    console.log(taken, status, call.id, call.turn, call.args);
  });
  npc.on("tool.end", ({ call, status, turn }) => console.log(call, status, turn));
  npc.on("turn", (turn: Turn) => {
    const game: boolean = turn.causedBy === "game";
    const event: string | null = turn.event;
    turn.on("tool", (call) => call.answer(null));
    console.log(game, event, turn.tools.length);
  });
  npc.on("closed", (err) => {
    if (err.code === CloseCode.KICKED) console.log("kicked: do not reconnect");
  });
  try {
    await npc.join("tavern");
  } catch (err) {
    if (err instanceof NpcError && err.code === ErrorCode.UNAVAILABLE) console.log(err.retryAfter);
    if (err instanceof NpcError && err.code === ErrorCode.UNKNOWN_CALL) console.log("late");
  }
}
void tools;
