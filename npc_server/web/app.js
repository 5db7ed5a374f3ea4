// Hearthside: the browser play page for npc-server, built on the JavaScript
// client library (clients/js, served here as /play/vendor/npc-client/). Plain
// ES modules, no build step: index.html maps "@msgpack/msgpack" to the
// vendored copy with an import map (see README.md).
//
// The library keeps the session: resume after a drop, the snapshot after a
// failed resume, token renewal, `seen` pacing, typing debounce. This file is
// the page: who is about, the chat logs, action cards, the room panel.

import {
  ConnectionClosedError,
  NpcClient,
  NpcError,
  RequestLost,
  RequestTimeout,
  ServerUnreachable,
} from "./vendor/npc-client/index.js";

// --- tunables ------------------------------------------------------------

const PING_EVERY_MS = 5000; // how often we measure latency
const TYPING_STALE_MS = 6000; // hide another player's "typing" if no update comes
const RETRY_FIRST_CONNECT_MS = 2000; // the server was not up yet: try again
const FOLLOW_SLACK_PX = 48; // this close to the bottom counts as "at the newest reply"
const CLIENT_NAME = "hearthside-web/2";

// Close codes after which reconnecting cannot help (docs/protocol.md, "Close codes").
const STOP_MESSAGES = {
  1000: ["Conversation closed", "The server ended the connection. Reload the page to talk again."],
  1009: ["Message too big", "The server refused a message that was too large. Reload the page."],
  4002: ["Sign-in expired", "Your token has expired. Open the page again with a fresh token."],
  4500: ["Sign-in refused", "The server did not accept your token. Open the page with a fresh one."],
  4501: ["Protocol error", "The page and the server disagreed about the protocol. Reload the page."],
  4503: ["Opened elsewhere", "This conversation was opened in another tab or window."],
  4513: ["Too many windows", "You have too many connections open. Close some tabs and reload."],
};

const REASON_BADGES = {
  interrupted: "Interrupted",
  superseded: "Cut off",
  error: "Lost the thread",
  timeout: "Ran out of time",
  lost: "Connection lost",
};

const ACTION_STATUS_TEXT = {
  waiting: "Waiting for your answer",
  sending: "Sending…",
  pending: "Happening…",
  accepted: "Approved",
  declined: "Declined",
  expired: "Expired",
  lost: "Expired: the connection was lost before you answered",
  done: "Done",
  retracted: "Retracted: cut off before it happened",
};

// --- state ---------------------------------------------------------------

const state = {
  token: null,
  devToken: false, // true when /dev/token issued it, so we can get another
  player: null,
  npcs: new Map(), // id -> {id, name, greeting}
  current: null, // selected NPC id
  logs: new Map(), // NPC id -> its chat log element
  client: null,
  stopped: false,
  views: new Map(), // turn id -> {turn, node, interrupting}
  room: null,
  others: new Map(), // player -> timer, for "is typing" in the room
  pingTimer: null,
};

const ui = {};

class Fatal extends Error {
  constructor(title, message) {
    super(message);
    this.title = title;
  }
}

// --- small helpers -------------------------------------------------------

function $(selector, root = document) {
  return root.querySelector(selector);
}

/** Build an element: el("p", {class: "x", dataset: {a: 1}}, "text", child). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function fromTemplate(id) {
  return document.getElementById(id).content.firstElementChild.cloneNode(true);
}

// Offsets on the wire count Unicode code points (Python `len`), not the
// UTF-16 units of a JS string, so cutting must go by code points too.
function cutCodePoints(text, n) {
  return Array.from(text).slice(0, n).join("");
}

function humanize(name) {
  const words = String(name).replace(/[_-]+/g, " ").trim();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function initial(name) {
  return (name || "?").trim().charAt(0).toUpperCase();
}

// A stable hue per name so each character keeps its colour.
function hueOf(text) {
  let hash = 0;
  for (const ch of String(text)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return hash % 360;
}

function paintAvatar(node, id, name) {
  node.textContent = initial(name);
  node.style.setProperty("--hue", String(hueOf(id)));
}

function npcName(id) {
  return state.npcs.get(id)?.name ?? humanize(id);
}

function storage() {
  try {
    return window.localStorage;
  } catch {
    return null; // storage can be disabled; the page works without it
  }
}

/** What went wrong with a request, in words for the player. */
function describeError(err) {
  if (err instanceof NpcError) {
    const retry = err.retryAfter ? ` Try again in ${Math.ceil(err.retryAfter)} s.` : "";
    return `${err.serverMessage || err.code}${retry}`;
  }
  if (err instanceof RequestLost) return "Not delivered: the connection dropped and the conversation started over.";
  if (err instanceof ConnectionClosedError) return "Not delivered: the connection is closed.";
  if (err instanceof RequestTimeout) return "Not delivered: the server did not answer in time.";
  return err?.message ?? String(err);
}

// --- start-up ------------------------------------------------------------

async function main() {
  bindUi();
  const params = new URLSearchParams(location.search);
  try {
    await obtainToken(params);
  } catch (err) {
    const fatal = err instanceof Fatal ? err : new Fatal("Could not sign in", String(err));
    stop(fatal.title, fatal.message);
    loadNpcs(null); // still show who is about, so the page does not look broken
    return;
  }
  showPlayer(state.player);
  loadNpcs(params.get("npc"));
  connect();
}

function bindUi() {
  const q = (id) => $(`[data-testid="${id}"]`);
  Object.assign(ui, {
    conn: q("conn-status"),
    latency: q("latency"),
    player: q("player-name"),
    banner: q("banner"),
    npcList: q("npc-list"),
    logs: q("logs"),
    stageName: q("stage-name"),
    stageStatus: q("stage-status"),
    stageAvatar: q("stage-avatar"),
    composer: q("composer"),
    input: q("message-input"),
    send: q("send-button"),
    interrupt: q("interrupt-button"),
    roomForm: q("room-form"),
    roomInput: q("room-input"),
    roomJoin: q("room-join"),
    roomCurrent: q("room-current"),
    roomLeave: q("room-leave"),
    roomFeed: q("room-feed"),
    roomTyping: q("room-typing"),
    toasts: q("toasts"),
  });
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    sayCurrent();
  });
  ui.input.addEventListener("input", onComposerInput);
  ui.interrupt.addEventListener("click", interruptCurrent);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !ui.interrupt.disabled) interruptCurrent();
  });
  ui.roomForm.addEventListener("submit", (event) => {
    event.preventDefault();
    joinRoom(ui.roomInput.value.trim());
  });
  ui.roomLeave.addEventListener("click", leaveRoom);
}

/** The token from the URL, or else one from the development endpoint. */
async function obtainToken(params) {
  const token = params.get("token");
  if (token) {
    state.token = token;
    state.player = params.get("player") || playerInToken(token) || "you";
    return;
  }
  const player = params.get("player") || rememberedName();
  state.token = await fetchDevToken(player);
  state.devToken = true;
  state.player = player;
}

async function fetchDevToken(player) {
  let response;
  try {
    response = await fetch("/dev/token", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ player }),
    });
  } catch {
    throw new Fatal("Server unreachable", "Could not reach the game server. Is it running?");
  }
  if (response.status === 404) {
    throw new Fatal(
      "Sign-in needed",
      "This server does not hand out development tokens (it runs with a secret). " +
        "Open the page as /play?token=YOUR_TOKEN&player=YOUR_NAME.",
    );
  }
  if (!response.ok) {
    throw new Fatal("Could not sign in", (await response.text()) || `HTTP ${response.status}`);
  }
  const body = await response.json();
  return body.token;
}

// A returning visitor keeps their name; a new one gets a random traveller.
function rememberedName() {
  const store = storage();
  let name = store?.getItem("hearthside.player");
  if (!name) {
    name = `traveller-${Math.floor(1000 + Math.random() * 9000)}`;
    store?.setItem("hearthside.player", name);
  }
  return name;
}

function playerInToken(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const sub = JSON.parse(atob(part)).sub;
    return typeof sub === "string" ? sub : null;
  } catch {
    return null;
  }
}

async function loadNpcs(preferred) {
  let npcs;
  try {
    const response = await fetch("/npcs");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    npcs = await response.json();
  } catch (err) {
    ui.npcList.replaceChildren(el("li", { class: "npc-placeholder" }, "Nobody is around."));
    toast(`Could not load the characters (${err.message}).`);
    return;
  }
  ui.npcList.replaceChildren();
  for (const npc of npcs) {
    state.npcs.set(npc.id, npc);
    ui.npcList.append(npcCard(npc));
  }
  if (preferred && state.npcs.has(preferred)) selectNpc(preferred);
}

function npcCard(npc) {
  const item = fromTemplate("tpl-npc-card");
  const button = $(".npc-card", item);
  button.dataset.testid = `npc-${npc.id}`;
  button.dataset.npc = npc.id;
  button.setAttribute("aria-pressed", "false");
  paintAvatar($(".avatar", item), npc.id, npc.name);
  $(".npc-name", item).textContent = npc.name;
  $(".npc-greeting", item).textContent = fillGreeting(npc.greeting);
  button.addEventListener("click", () => selectNpc(npc.id));
  return item;
}

function fillGreeting(greeting) {
  return (greeting || "").replaceAll("{player}", state.player ?? "traveller");
}

// --- choosing whom to talk to -------------------------------------------

function selectNpc(id) {
  state.current = id;
  for (const card of ui.npcList.querySelectorAll(".npc-card")) {
    card.setAttribute("aria-pressed", String(card.dataset.npc === id));
  }
  const log = logFor(id);
  for (const other of ui.logs.children) other.hidden = other !== log;
  ui.stageName.textContent = npcName(id);
  paintAvatar(ui.stageAvatar, id, npcName(id));
  ui.stageAvatar.classList.add("shown");
  updateControls();
  follow(log, true);
  ui.input.focus();
}

/** Each NPC has its own log, created on first use and opened by its greeting. */
function logFor(npcId) {
  let log = state.logs.get(npcId);
  if (log) return log;
  $(".empty-stage", ui.logs)?.remove();
  log = el("div", { class: "log", dataset: { testid: "chat-log", npc: npcId, following: "true" }, role: "log" });
  log.hidden = npcId !== state.current;
  // The log follows the newest reply until the reader scrolls up, and again
  // once they scroll back down to the bottom.
  log.addEventListener("scroll", () => {
    const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight <= FOLLOW_SLACK_PX;
    log.dataset.following = String(atEnd);
  });
  const greeting = state.npcs.get(npcId)?.greeting;
  if (greeting) {
    const intro = npcBubble(npcId, "intro");
    $(".kept", intro).textContent = fillGreeting(greeting);
    log.append(intro);
  }
  state.logs.set(npcId, log);
  ui.logs.append(log);
  return log;
}

/** Keep the newest text in view, unless the reader scrolled up (`force` for their own say). */
function follow(log, force = false) {
  // Moved up since we last scrolled: the reader is reading back, even if the
  // scroll event saying so has not been dispatched yet.
  const movedUp = log.scrollTop < (log.autoTop ?? 0) - 2;
  if (force) log.dataset.following = "true";
  else if (movedUp) log.dataset.following = "false";
  if (log.dataset.following !== "true") return;
  log.scrollTop = log.scrollHeight;
  log.autoTop = log.scrollTop;
}

function appendToLog(npcId, node) {
  const log = logFor(npcId);
  log.append(node);
  follow(log);
}

// --- the connection --------------------------------------------------------

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws`;
}

function connect() {
  const client = new NpcClient({
    url: wsUrl(),
    token: state.token,
    // Development tokens are renewed in place before they expire, and after a 4002.
    tokenProvider: state.devToken ? () => fetchDevToken(state.player) : undefined,
    refreshMarginMs: 120_000,
    clientName: CLIENT_NAME,
    backoff: { initialMs: 300, maxMs: 8000, giveUpAfterMs: null },
  });
  state.client = client;
  client.on("state", onState);
  client.on("welcome", onWelcome);
  client.on("resync", onResync);
  client.on("closed", onClosed);
  client.on("turn", (turn) => showTurn(turn));
  client.on("said", onSaid);
  client.on("presence", onPresence);
  // Cluster mode: a server lost part of the room's talk from other servers (Redis was away).
  client.on("room.gap", (gap) => feed(`Some of what was said in ${gap.room} may be missing.`, "gap"));
  client.on("typing", (typing) => showTyping(typing.player, typing.on === true));
  client.on("draining", () => toast("The server is restarting. You will be reconnected without losing anything."));
  client.on("notice", (err) => toast(describeError(err)));
  client.on("error", (err) => console.warn("npc client:", err));
  setStatus("connecting");
  client.open().catch(onFirstConnectFailed);
}

function onFirstConnectFailed(err) {
  if (err instanceof ServerUnreachable) {
    setStatus("reconnecting");
    setTimeout(connect, RETRY_FIRST_CONNECT_MS * (0.8 + Math.random() * 0.4));
    return;
  }
  stopFor(err);
}

function onState({ state: next }) {
  if (next === "open") setStatus("open");
  else if (next === "resuming") setStatus("reconnecting");
  else if (next === "connecting") setStatus("connecting");
  // "closed" is handled by onClosed, which knows why
}

function onWelcome({ resumed }) {
  const client = state.client;
  if (client.player && client.player !== state.player) {
    state.player = client.player;
    showPlayer(client.player);
  }
  const maxChars = client.limits?.text_chars;
  if (Number.isInteger(maxChars)) ui.input.maxLength = maxChars;
  hideBanner();
  startPinging();
  // A new session forgot our room: go back in (the first connect has none).
  if (!resumed && state.room) {
    const room = state.room;
    client.join(room).catch((err) => {
      exitRoom();
      toast(`Could not rejoin ${room}: ${describeError(err)}`);
    });
  }
}

function onResync({ lostTurns, expiredActions }) {
  if (lostTurns.length > 0 || expiredActions.length > 0) {
    toast("The connection was lost for too long: what was in progress has been marked.");
  }
}

function onClosed(err) {
  if (state.stopped) return;
  stopFor(err);
}

function stopFor(err) {
  if (err instanceof ConnectionClosedError) {
    const known = STOP_MESSAGES[err.code];
    const [title, text] = known ?? ["Disconnected", `The server closed the connection (code ${err.code}). Reload to try again.`];
    stop(title, err.reason ? `${text} (${err.reason})` : text);
  } else {
    stop("Disconnected", `${describeError(err)} Reload to try again.`);
  }
}

/** Give up for good: the banner says why, the controls go quiet. */
function stop(title, message) {
  state.stopped = true;
  stopPinging();
  setStatus("closed");
  showBanner(title, message);
  if (state.client && state.client.state !== "closed") state.client.close();
  updateControls();
}

function isOpen() {
  return state.client?.state === "open" && !state.stopped;
}

function setStatus(status) {
  const labels = {
    connecting: "Connecting",
    open: "Connected",
    reconnecting: "Reconnecting",
    closed: "Disconnected",
  };
  ui.conn.dataset.state = status;
  $(".conn-label", ui.conn).textContent = labels[status];
  if (status !== "open") ui.latency.classList.add("stale");
  updateControls();
}

function startPinging() {
  stopPinging();
  const ping = () => {
    state.client
      ?.ping()
      .then((ms) => {
        // Tenths below 10 ms (a loopback round trip is well under one); 9.96 would read 10.0.
        ui.latency.textContent = ms < 9.95 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
        ui.latency.classList.remove("stale");
      })
      .catch(() => ui.latency.classList.add("stale")); // the connection indicator says why
  };
  ping();
  state.pingTimer = setInterval(ping, PING_EVERY_MS);
}

function stopPinging() {
  clearInterval(state.pingTimer);
  state.pingTimer = null;
}

// --- turns ---------------------------------------------------------------

function npcBubble(npcId, kind) {
  const name = npcName(npcId);
  const avatar = el("div", { class: "avatar", "aria-hidden": "true" });
  paintAvatar(avatar, npcId, name);
  return el(
    "article",
    { class: `msg msg-npc ${kind}` },
    avatar,
    el(
      "div",
      { class: "bubble" },
      el(
        "header",
        { class: "msg-head" },
        el("span", { class: "msg-name" }, name),
        el("span", { class: "msg-note" }),
        el("span", { class: "badge", dataset: { testid: "turn-badge" } }),
      ),
      el(
        "p",
        { class: "msg-text" },
        el("span", { class: "kept", dataset: { testid: "turn-text" } }),
        el("span", { class: "forgotten", title: "Cut off: the character will not remember this part" }),
      ),
      el("div", { class: "msg-actions" }),
    ),
  );
}

/** A bubble for a turn, fed by the library's Turn events. */
function showTurn(turn, npc = turn.npc) {
  if (state.views.has(turn.id)) return state.views.get(turn.id);
  const node = npcBubble(npc, "turn");
  node.dataset.testid = "npc-turn";
  node.dataset.turn = turn.id;
  const view = { turn, node, npc, interrupting: false };
  state.views.set(turn.id, view);
  appendToLog(npc, node);
  const started = () => {
    node.dataset.state = "streaming";
    if (turn.player && turn.player !== state.player) setNote(node, `to ${turn.player}`);
    renderTurnText(view);
    updateControls();
  };
  if (turn.started) started();
  else {
    node.dataset.state = "queued";
    node.classList.add("waiting");
    turn.on("start", started);
  }
  for (const action of turn.actions) showAction(view, action);
  turn.on("text", () => {
    const first = !node.dataset.spoke;
    node.dataset.spoke = "true";
    renderTurnText(view);
    turn.seen(turn.received); // on screen at once; the library paces the reports
    follow(logFor(npc));
    if (first) updateControls(); // "is thinking…" becomes "is speaking…"
  });
  turn.on("action", (action) => showAction(view, action));
  turn.done.then((end) => endTurn(view, end), () => endTurn(view, { reason: "lost" }));
  if (turn.ended) endTurn(view, turn);
  return view;
}

function renderTurnText(view, kept = null) {
  const { turn, node } = view;
  const keptText = kept === null || kept >= turn.received ? turn.text : cutCodePoints(turn.text, kept);
  $(".kept", node).textContent = keptText;
  $(".forgotten", node).textContent = turn.text.slice(keptText.length);
  node.classList.toggle("waiting", turn.received === 0 && !turn.ended);
}

function endTurn(view, { reason, kept, chars, error }) {
  const { node } = view;
  if (node.dataset.state === "ended") return;
  node.dataset.state = "ended";
  node.dataset.reason = reason;
  if (typeof kept === "number") node.dataset.kept = String(kept);
  if (typeof chars === "number") node.dataset.chars = String(chars);
  $(".badge", node).textContent = REASON_BADGES[reason] ?? "";
  if (error) setNote(node, describeError(error));
  // After a cut, show what the NPC will remember: anything past `kept` is
  // struck through. A turn that ran to its end was seen whole, whatever
  // `kept` says (it can trail by the last throttled `seen`).
  const cut = reason !== "done" && typeof kept === "number";
  renderTurnText(view, cut ? kept : null);
  updateControls();
}

function activeView(npcId) {
  let found = null;
  for (const view of state.views.values()) {
    if (view.npc === npcId && view.turn.started && !view.turn.ended) found = view; // newest wins
  }
  return found;
}

function interruptCurrent() {
  const view = activeView(state.current);
  if (!view || view.interrupting || !isOpen()) return;
  view.interrupting = true;
  updateControls();
  // `shown` is exactly what is on screen, so the NPC remembers no more than that.
  view.turn.interrupt(view.turn.received).catch((err) => {
    view.interrupting = false;
    updateControls();
    toast(`Could not interrupt: ${describeError(err)}`);
  });
}

// --- the player's messages ----------------------------------------------

function playerBubble(name, text, own) {
  return el(
    "article",
    { class: `msg msg-player${own ? " own" : ""}`, dataset: { testid: own ? "player-msg" : "other-msg" } },
    el(
      "div",
      { class: "bubble" },
      el(
        "header",
        { class: "msg-head" },
        el("span", { class: "msg-name" }, own ? "You" : name),
        el("span", { class: "msg-note", dataset: { testid: "msg-note" } }),
      ),
      el("p", { class: "msg-text" }, text),
    ),
  );
}

function setNote(bubble, text) {
  $(".msg-note", bubble).textContent = text;
}

async function sayCurrent() {
  const text = ui.input.value.trim();
  if (!text || !state.current || !isOpen()) return;
  const npc = state.current;
  const bubble = playerBubble(state.player, text, true);
  bubble.dataset.state = "sending";
  appendToLog(npc, bubble);
  follow(logFor(npc), true);
  ui.input.value = "";
  state.client.stopTyping();
  try {
    const turn = await state.client.say(npc, text, { room: state.room ?? undefined });
    bubble.dataset.state = "sent";
    bubble.dataset.turn = turn.id;
    if (turn.queued) setNote(bubble, `Waiting: ${npcName(npc)} is busy (#${turn.queued} in line)`);
    turn.on("start", () => setNote(bubble, ""));
    showTurn(turn, npc);
  } catch (err) {
    // Never silent: the player sees that this message did not get through, and why.
    bubble.dataset.state = "failed";
    bubble.classList.add("failed");
    setNote(bubble, describeError(err));
  }
}

function onComposerInput() {
  if (!state.room || !isOpen()) return;
  state.client.typing({ room: state.room, npc: state.current ?? undefined });
}

// --- actions -------------------------------------------------------------

function showAction(view, action) {
  const card = fromTemplate("tpl-action-card");
  card.dataset.action = action.id;
  card.dataset.name = action.name;
  $(".action-name", card).textContent = humanize(action.name);
  $(".action-args", card).replaceChildren(...argChips(action.args));
  $('[data-testid="approve-button"]', card).addEventListener("click", () => answer(action, card, true));
  $('[data-testid="decline-button"]', card).addEventListener("click", () => answer(action, card, false));
  $(".msg-actions", view.node).append(card);
  if (action.status) settleCard(action, card);
  else setCardStatus(action, card, action.approval ? "waiting" : "pending");
  action.on("end", () => settleCard(action, card));
  follow(logFor(view.npc));
}

function argChips(args) {
  if (!args || typeof args !== "object") return [];
  return Object.entries(args).map(([key, value]) =>
    el("span", { class: "chip" }, `${humanize(key)}: ${typeof value === "object" ? JSON.stringify(value) : value}`),
  );
}

async function answer(action, card, accept) {
  if (!isOpen() || action.status) return;
  setCardStatus(action, card, "sending");
  try {
    await (accept ? action.accept() : action.decline());
  } catch (err) {
    if (action.status) return; // settled meanwhile (expired, retracted)
    if (err instanceof NpcError && err.code === "unknown_action") {
      // The server no longer knows it (its session was lost): it cannot happen now.
      setCardStatus(action, card, "expired");
      return;
    }
    setCardStatus(action, card, "waiting");
    toast(`Could not answer: ${describeError(err)}`);
  }
}

function settleCard(action, card) {
  setCardStatus(action, card, action.lost ? "lost" : action.status);
}

function setCardStatus(action, card, status) {
  card.dataset.status = status === "lost" ? "expired" : status;
  $(".action-status", card).textContent = ACTION_STATUS_TEXT[status] ?? humanize(status);
  const answerable = action.approval && (status === "waiting" || status === "sending");
  $(".action-controls", card).hidden = !answerable;
  for (const button of card.querySelectorAll(".action-controls button")) {
    button.disabled = status !== "waiting";
  }
}

// --- rooms ---------------------------------------------------------------

async function joinRoom(room) {
  if (!room || !isOpen()) return;
  try {
    await state.client.join(room);
    enterRoom(room);
  } catch (err) {
    toast(`Could not join ${room}: ${describeError(err)}`);
  }
}

async function leaveRoom() {
  if (!state.room || !isOpen()) return;
  try {
    await state.client.leave(state.room);
  } catch (err) {
    if (!(err instanceof NpcError && err.code === "not_in_room")) {
      toast(`Could not leave: ${describeError(err)}`);
      return;
    }
  }
  exitRoom();
}

function enterRoom(room) {
  if (state.room === room) return;
  state.room = room;
  ui.roomForm.hidden = true;
  ui.roomCurrent.hidden = false;
  $(".room-name", ui.roomCurrent).textContent = room;
  // A read-only view over server-sent events, for spectators and second screens.
  $(".room-watch", ui.roomCurrent).href = `/play/watch.html?room=${encodeURIComponent(room)}`;
  $(".feed-empty", ui.roomFeed)?.remove();
  feed(`You joined ${room}.`, "self");
  updateControls();
}

function exitRoom() {
  if (state.room) feed(`You left ${state.room}.`, "self");
  state.room = null;
  ui.roomForm.hidden = false;
  ui.roomCurrent.hidden = true;
  ui.roomTyping.textContent = "";
  updateControls();
}

function feed(text, kind = "") {
  const item = el("li", { class: `feed-item ${kind}` }, text);
  ui.roomFeed.append(item);
  // The feed is a short history: keep the newest events only.
  while (ui.roomFeed.children.length > 60) ui.roomFeed.firstElementChild.remove();
  ui.roomFeed.scrollTop = ui.roomFeed.scrollHeight;
}

function onSaid(said) {
  feed(`${said.player} to ${npcName(said.npc)}: “${said.text}”`, "said");
  appendToLog(said.npc, playerBubble(said.player, said.text, false));
  showTyping(said.player, false);
}

function onPresence(presence) {
  const verb = presence.state === "joined" ? "joined" : "left";
  feed(`${presence.player} ${verb} ${presence.room}.`, "presence");
  if (verb === "left") showTyping(presence.player, false);
}

function showTyping(player, on) {
  clearTimeout(state.others.get(player));
  state.others.delete(player);
  // Typing notices may be dropped, so an "on" without a later "off" expires.
  if (on) state.others.set(player, setTimeout(() => showTyping(player, false), TYPING_STALE_MS));
  const names = [...state.others.keys()];
  ui.roomTyping.textContent =
    names.length === 0 ? "" : `${names.join(", ")} ${names.length === 1 ? "is" : "are"} typing…`;
}

// --- controls, banner, toasts -------------------------------------------

/** Enable exactly what makes sense now: connection, NPC chosen, turn streaming. */
function updateControls() {
  const open = isOpen();
  const chosen = Boolean(state.current);
  ui.input.disabled = !open || !chosen;
  ui.send.disabled = !open || !chosen;
  ui.roomJoin.disabled = !open;
  ui.roomLeave.disabled = !open;
  const view = chosen ? activeView(state.current) : null;
  ui.interrupt.disabled = !open || !view || view.interrupting;
  ui.input.placeholder = !chosen
    ? "Choose someone to talk to…"
    : `Say something to ${npcName(state.current)}${state.room ? ` in ${state.room}` : ""}…`;
  ui.stageStatus.textContent = !chosen ? "" : view ? stageStatus(view) : "is listening";
  ui.stageStatus.classList.toggle("live", Boolean(view));
  for (const card of ui.npcList.querySelectorAll(".npc-card")) {
    card.classList.toggle("speaking", Boolean(activeView(card.dataset.npc)));
  }
}

/** "is thinking…" until the first text arrives, then "is speaking…". */
function stageStatus(view) {
  const verb = view.turn.received === 0 ? "is thinking" : "is speaking";
  const to = view.turn.player && view.turn.player !== state.player ? ` to ${view.turn.player}` : "";
  return `${verb}${to}…`;
}

function showPlayer(name) {
  ui.player.textContent = name ?? "";
  ui.player.hidden = !name;
  for (const node of document.querySelectorAll(".npc-greeting")) {
    const npc = state.npcs.get(node.closest(".npc-card")?.dataset.npc);
    if (npc) node.textContent = fillGreeting(npc.greeting);
  }
}

function showBanner(title, text) {
  $(".banner-title", ui.banner).textContent = title;
  $(".banner-text", ui.banner).textContent = text;
  ui.banner.hidden = false;
}

function hideBanner() {
  ui.banner.hidden = true;
}

function toast(text) {
  const node = el("div", { class: "toast", dataset: { testid: "toast" } }, text);
  ui.toasts.append(node);
  setTimeout(() => node.classList.add("leaving"), 5000);
  setTimeout(() => node.remove(), 5600);
}

main();
