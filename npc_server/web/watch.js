// A read-only view of one room: EventSource on /watch (docs/protocol.md,
// "Watching a room over SSE"). The browser reconnects by itself and sends
// Last-Event-ID; the server replays what was missed, or says `reset` and
// restates the active turns, so the page only ever applies what it is given.

const params = new URLSearchParams(location.search);
const room = params.get("room") ?? "";
const $ = (selector, root = document) => root.querySelector(selector);
const ui = {
  room: $('[data-testid="watch-room"]'),
  members: $('[data-testid="watch-members"]'),
  conn: $('[data-testid="conn-status"]'),
  banner: $('[data-testid="banner"]'),
  log: $('[data-testid="watch-log"]'),
  typing: $('[data-testid="watch-typing"]'),
};
const turns = new Map();
const members = new Set();
const typing = new Map();

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function setState(state, label) {
  ui.conn.dataset.state = state;
  $(".conn-label", ui.conn).textContent = label;
}

function showBanner(title, text) {
  $(".banner-title", ui.banner).textContent = title;
  $(".banner-text", ui.banner).textContent = text;
  ui.banner.hidden = false;
}

function append(node) {
  const atEnd = ui.log.scrollTop + ui.log.clientHeight >= ui.log.scrollHeight - 40;
  ui.log.append(node);
  if (atEnd) ui.log.scrollTop = ui.log.scrollHeight;
}

function line(text) {
  append(el("p", { class: "watch-line" }, text));
}

function renderMembers() {
  ui.members.textContent = members.size ? `In the room: ${[...members].sort().join(", ")}` : "Nobody here yet";
}

function bubble(kind, name, testid) {
  const text = el("p", { class: "msg-text" }, el("span", { class: "kept" }), el("span", { class: "forgotten" }));
  const head = el("header", { class: "msg-head" }, el("span", { class: "msg-name" }, name));
  return el("article", { class: `msg ${kind}`, dataset: { testid } }, el("div", { class: "bubble" }, head, text));
}

function turnFor(frame) {
  let turn = turns.get(frame.turn);
  if (!turn) {
    turn = { text: "", node: bubble("msg-npc", frame.npc ?? "NPC", "watch-turn") };
    turn.node.dataset.turn = frame.turn;
    turns.set(frame.turn, turn);
    append(turn.node);
  }
  return turn;
}

function renderTurn(turn, kept = turn.text.length) {
  $(".kept", turn.node).textContent = turn.text.slice(0, kept);
  $(".forgotten", turn.node).textContent = turn.text.slice(kept);
}

function renderTyping() {
  const who = [...typing.keys()];
  ui.typing.textContent = who.length ? `${who.join(", ")} ${who.length > 1 ? "are" : "is"} typing…` : "";
}

const handlers = {
  live(data) {
    members.clear();
    for (const player of data.members) members.add(player);
    renderMembers();
    setState("open", "Live");
  },
  reset() {
    // Some events are gone: the active turns follow whole, the rest stays as it was.
    line("(reconnected: some events were missed)");
  },
  draining() {
    setState("reconnecting", "Server restarting");
  },
  "room.gap"() {
    // Cluster mode: this server lost some of the room's talk from other servers.
    line("(some of what was said in the room may be missing)");
  },
  presence(frame) {
    if (frame.state === "joined") members.add(frame.player);
    else members.delete(frame.player);
    renderMembers();
    line(`${frame.player} ${frame.state} the room`);
  },
  said(frame) {
    const node = bubble("msg-player", `${frame.player} → ${frame.npc}`, "watch-said");
    $(".kept", node).textContent = frame.text;
    append(node);
    typing.delete(frame.player);
    renderTyping();
  },
  typing(frame) {
    if (frame.on) typing.set(frame.player, frame.npc);
    else typing.delete(frame.player);
    renderTyping();
  },
  "turn.start"(frame) {
    turnFor(frame);
  },
  delta(frame) {
    const turn = turnFor(frame);
    turn.text = turn.text.slice(0, frame.at) + frame.text;
    renderTurn(turn);
  },
  action(frame) {
    const turn = turnFor(frame);
    const note = el("span", { class: "msg-note" }, `[${frame.name}${frame.approval ? ", waiting for approval" : ""}]`);
    $(".msg-head", turn.node).append(note);
  },
  "action.end"() {},
  "turn.end"(frame) {
    const turn = turns.get(frame.turn);
    if (!turn) return;
    turn.node.dataset.state = "ended";
    turn.node.dataset.reason = frame.reason;
    // Past `kept` the NPC will not remember it: shown struck through, as on /play.
    renderTurn(turn, frame.reason === "done" ? turn.text.length : frame.kept);
  },
};

/** The watch token: from the link, or (development servers only) from /dev/watch-token. */
async function watchToken() {
  if (params.get("token")) return params.get("token");
  try {
    const response = await fetch("/dev/watch-token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ room }),
    });
    if (response.ok) return (await response.json()).token;
  } catch {
    // No dev tokens here: the room may still be public.
  }
  return null;
}

async function listen() {
  ui.room.textContent = room || "(no room)";
  const query = new URLSearchParams({ room });
  const token = await watchToken();
  if (token) query.set("token", token);
  const source = new EventSource(`/watch?${query}`);
  for (const [kind, handle] of Object.entries(handlers)) {
    source.addEventListener(kind, (event) => handle(JSON.parse(event.data)));
  }
  source.addEventListener("open", () => setState("open", "Live"));
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      // Refused (401, 403, 404, 429): EventSource does not retry those.
      setState("closed", "Not watching");
      showBanner("Cannot watch this room.", "The link may have expired, or the room is empty.");
    } else {
      setState("reconnecting", "Reconnecting");
    }
  });
}

listen();
