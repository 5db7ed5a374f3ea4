// Type-checked by `tsc --noEmit` (never run): the README's usage compiles.
import {
  type Action,
  ConnectionClosedError,
  NpcError,
  PROTOCOL_VERSION,
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
