// Hearthside: the browser play page for npc-server, speaking protocol v1
// (shared/PROTOCOL.md). Plain ES module, no build step: the only dependency is
// the vendored @msgpack/msgpack ESM build (see README.md).
//
// The page keeps one WebSocket. Every server frame after `welcome` carries a
// `seq`; we remember the last one so a dropped socket can resume the session
// with nothing lost. NPC replies arrive as `delta`s with a character offset
// `at`, which makes applying them idempotent (replays and snapshots just
// rewrite the same span).

import { decode, encode } from "./vendor/msgpack/index.mjs";

// --- tunables ------------------------------------------------------------

const PING_EVERY_MS = 5000; // how often we measure latency
const SEEN_EVERY_MS = 400; // `seen` throttle: well under the server's rate limit
const TYPING_IDLE_MS = 3000; // stop "typing" after this long without a keystroke
const TYPING_STALE_MS = 6000; // hide another player's "typing" if no update comes
const BACKOFF_MS = [300, 1000, 2000, 4000, 8000]; // reconnect delays, then the last one
const REFRESH_MARGIN_S = 120; // renew a development token this long before it expires
const CLIENT_NAME = "hearthside-web/1";

// Close codes after which reconnecting cannot help (PROTOCOL.md, "Close codes").
const STOP_MESSAGES = {
  1000: ["Conversation closed", "The server ended the connection. Reload the page to talk again."],
  1009: ["Message too big", "The server refused a message that was too large. Reload the page."],
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
  ws: null,
  session: null,
  seq: 0, // last seq processed; sent back in hello.resume
  stopped: false,
  attempt: 0, // reconnects since the last welcome, for backoff
  retryAfterMs: null, // set by `draining`
  nextId: 1,
  pending: new Map(), // request id -> what we asked, to route ack/error
  turns: new Map(), // turn id -> turn record
  actions: new Map(), // action id -> action record
  room: null,
  others: new Map(), // player -> timer, for "is typing" in the room
  typingTimer: null,
  pingTimer: null,
  lastPongAt: 0,
  refreshTimer: null,
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
function codePoints(text) {
  return Array.from(text).length;
}

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

function newId() {
  return state.nextId++;
}

function storage() {
  try {
    return window.localStorage;
  } catch {
    return null; // storage can be disabled; the page works without it
  }
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
  scheduleTokenRefresh();
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

function tokenClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch {
    return {};
  }
}

function playerInToken(token) {
  const sub = tokenClaims(token).sub;
  return typeof sub === "string" ? sub : null;
}

// Development tokens expire after an hour; renew in place with `refresh`
// so a long session never gets closed with 4002.
function scheduleTokenRefresh() {
  clearTimeout(state.refreshTimer);
  const exp = tokenClaims(state.token).exp;
  if (!state.devToken || typeof exp !== "number") return;
  const delay = Math.max(5, exp - REFRESH_MARGIN_S - Date.now() / 1000) * 1000;
  state.refreshTimer = setTimeout(refreshToken, delay);
}

async function refreshToken() {
  try {
    const token = await fetchDevToken(state.player);
    const id = newId();
    state.pending.set(id, { kind: "refresh", token });
    send({ t: "refresh", id, token });
  } catch (err) {
    toast(`Could not renew the sign-in: ${err.message}`);
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
  scrollToEnd(log, true);
  ui.input.focus();
}

/** Each NPC has its own log, created on first use and opened by its greeting. */
function logFor(npcId) {
  let log = state.logs.get(npcId);
  if (log) return log;
  $(".empty-stage", ui.logs)?.remove();
  log = el("div", { class: "log", dataset: { testid: "chat-log", npc: npcId }, role: "log" });
  log.hidden = npcId !== state.current;
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

// Follow new text only when the reader is already at the bottom.
function scrollToEnd(log, force = false) {
  const nearEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
  if (force || nearEnd) log.scrollTop = log.scrollHeight;
}

function appendToLog(npcId, node) {
  const log = logFor(npcId);
  const follow = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
  log.append(node);
  if (follow) log.scrollTop = log.scrollHeight;
}

// --- the socket ----------------------------------------------------------

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws`;
}

function connect() {
  setStatus(state.session ? "reconnecting" : "connecting");
  const ws = new WebSocket(wsUrl());
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  ws.addEventListener("open", () => sendHello(ws));
  ws.addEventListener("message", (event) => {
    if (ws === state.ws) onMessage(event.data);
  });
  ws.addEventListener("close", (event) => onClose(ws, event));
}

function sendHello(ws) {
  const hello = { t: "hello", token: state.token, client: CLIENT_NAME };
  if (state.session) hello.resume = { session: state.session, seq: state.seq };
  ws.send(encode(hello));
}

function isOpen() {
  return state.ws?.readyState === WebSocket.OPEN && ui.conn.dataset.state === "open";
}

/** Send one frame; undefined keys are left out rather than sent as nil. */
function send(frame) {
  if (state.ws?.readyState !== WebSocket.OPEN) return false;
  state.ws.send(encode(frame, { ignoreUndefined: true }));
  return true;
}

function onMessage(data) {
  if (typeof data === "string") return; // v1 servers send binary only
  let frame;
  try {
    frame = decode(new Uint8Array(data));
  } catch (err) {
    console.warn("undecodable frame", err);
    return;
  }
  if (!frame || typeof frame !== "object" || typeof frame.t !== "string") return;
  if (!acceptSeq(frame)) return;
  const handler = HANDLERS[frame.t];
  if (handler) handler(frame);
}

// Frames at or below the remembered seq were already applied (a replay can
// overlap); a gap should never happen and is only logged.
function acceptSeq(frame) {
  if (frame.t === "welcome" || typeof frame.seq !== "number") return true;
  if (frame.seq <= state.seq) return false;
  if (frame.seq !== state.seq + 1) console.warn(`seq gap: ${state.seq} then ${frame.seq}`);
  state.seq = frame.seq;
  return true;
}

function onClose(ws, event) {
  if (ws !== state.ws) return;
  state.ws = null;
  stopPinging();
  stopTyping(false);
  if (state.stopped) return;
  const code = event.code;
  const fatal = STOP_MESSAGES[code] ?? (code >= 4500 && code <= 4999 ? genericStop(code) : null);
  if (fatal) {
    stop(fatal[0], event.reason ? `${fatal[1]} (${event.reason})` : fatal[1]);
  } else if (code === 4002) {
    renewAndReconnect();
  } else {
    scheduleReconnect(code === 4029 ? 2000 : 0);
  }
}

function genericStop(code) {
  return ["Disconnected", `The server closed the connection (code ${code}). Reload to try again.`];
}

/** 4000-4499, 1001, 1006, 1011 …: come back and resume where we were. */
function scheduleReconnect(minimumMs) {
  const step = BACKOFF_MS[Math.min(state.attempt, BACKOFF_MS.length - 1)];
  const base = Math.max(state.retryAfterMs ?? step, minimumMs);
  // Jitter spreads a crowd of clients reconnecting to a restarted server.
  const delay = base * (0.8 + Math.random() * 0.4);
  state.attempt += 1;
  state.retryAfterMs = null;
  setStatus("reconnecting");
  setTimeout(connect, delay);
}

async function renewAndReconnect() {
  if (!state.devToken) {
    stop("Sign-in expired", "Your token has expired. Open the page again with a fresh token.");
    return;
  }
  try {
    state.token = await fetchDevToken(state.player);
    scheduleTokenRefresh();
    scheduleReconnect(0);
  } catch (err) {
    stop(err.title ?? "Sign-in expired", err.message);
  }
}

/** Give up for good: the banner says why, the controls go quiet. */
function stop(title, message) {
  state.stopped = true;
  stopPinging();
  clearTimeout(state.refreshTimer);
  setStatus("closed");
  showBanner(title, message);
  if (state.ws) {
    state.ws.close(1000);
    state.ws = null;
  }
  updateControls();
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

// --- heartbeat and latency ----------------------------------------------

function startPinging() {
  stopPinging();
  const ping = () => {
    send({ t: "ping", id: `p${newId()}`, ts: Date.now() });
    if (Date.now() - state.lastPongAt > 3 * PING_EVERY_MS) ui.latency.classList.add("stale");
  };
  ping();
  state.pingTimer = setInterval(ping, PING_EVERY_MS);
}

function stopPinging() {
  clearInterval(state.pingTimer);
  state.pingTimer = null;
}

// --- server frames -------------------------------------------------------

const HANDLERS = {
  welcome: onWelcome,
  ack: onAck,
  error: onError,
  "turn.start": onTurnStart,
  delta: onDelta,
  action: onAction,
  "action.end": onActionEnd,
  "turn.end": onTurnEnd,
  said: onSaid,
  typing: onTyping,
  presence: onPresence,
  draining: onDraining,
  ping: (frame) => send({ t: "pong", ts: frame.ts }),
  pong: onPong,
};

function onWelcome(frame) {
  const resumed = frame.resumed === true && frame.session === state.session;
  if (!resumed) {
    // A new session: the old one's unanswered requests and unfinished turns
    // are gone. Turns still running come back as a snapshot right after.
    state.seq = frame.seq ?? 0;
    abandonSession();
  }
  state.session = frame.session;
  state.attempt = 0;
  if (frame.player && frame.player !== state.player) {
    state.player = frame.player;
    showPlayer(frame.player);
  }
  const maxChars = frame.limits?.text_chars;
  if (Number.isInteger(maxChars)) ui.input.maxLength = maxChars;
  hideBanner();
  setStatus("open");
  startPinging();
  if (!resumed && state.room) send({ t: "join", id: newId(), room: state.room });
}

function abandonSession() {
  for (const [id, request] of state.pending) {
    if (request.kind === "say") markSayFailed(request, "Not delivered: the connection dropped.");
    state.pending.delete(id);
  }
  for (const turn of state.turns.values()) {
    if (!turn.ended) endTurn(turn, { reason: "lost" });
  }
}

function onAck(frame) {
  const request = takePending(frame.id);
  if (!request) return;
  if (request.kind === "say") {
    request.bubble.dataset.turn = frame.turn ?? "";
    if (frame.queued) setNote(request.bubble, `Waiting: ${npcName(request.npc)} is busy (#${frame.queued} in line)`);
  } else if (request.kind === "join") {
    enterRoom(request.room);
  } else if (request.kind === "leave") {
    exitRoom();
  } else if (request.kind === "refresh") {
    state.token = request.token;
    scheduleTokenRefresh();
  }
}

function onError(frame) {
  const request = takePending(frame.id);
  const retry = frame.retry_after ? ` Try again in ${Math.ceil(frame.retry_after)} s.` : "";
  const message = `${frame.message || frame.code}${retry}`;
  if (request?.kind === "say") {
    markSayFailed(request, message);
  } else if (request?.kind === "act") {
    const action = state.actions.get(request.action);
    if (action) setActionStatus(action, "waiting");
    toast(message);
  } else if (request?.kind === "interrupt" && frame.code === "unknown_turn") {
    // The turn finished before our interrupt arrived: nothing to report.
  } else {
    toast(message);
  }
}

function takePending(id) {
  if (id === undefined || id === null) return null;
  const request = state.pending.get(id);
  state.pending.delete(id);
  return request ?? null;
}

function onDraining(frame) {
  state.retryAfterMs = Math.max(0, (frame.retry_after ?? 1) * 1000);
  toast("The server is restarting. You will be reconnected without losing anything.");
}

function onPong(frame) {
  if (typeof frame.ts !== "number") return;
  const rtt = Math.max(0, Date.now() - frame.ts);
  state.lastPongAt = Date.now();
  ui.latency.textContent = `${Math.round(rtt)} ms`;
  ui.latency.classList.remove("stale");
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

function onTurnStart(frame) {
  let turn = state.turns.get(frame.turn);
  if (!turn) {
    turn = {
      id: frame.turn,
      npc: frame.npc,
      player: frame.player,
      room: frame.room ?? null,
      text: "",
      chars: 0,
      seenSent: 0,
      seenTimer: null,
      ended: false,
      node: npcBubble(frame.npc, "turn"),
    };
    turn.node.dataset.testid = "npc-turn";
    turn.node.dataset.turn = turn.id;
    state.turns.set(turn.id, turn);
    appendToLog(frame.npc, turn.node);
  }
  // A snapshot after a fresh session restarts a turn we had marked lost.
  turn.ended = false;
  turn.interrupting = false;
  turn.node.dataset.state = "streaming";
  turn.node.dataset.reason = "";
  $(".badge", turn.node).textContent = "";
  if (turn.player !== state.player) setNote(turn.node, `to ${turn.player}`);
  clearQueuedNote(frame.reply_to);
  renderTurnText(turn);
  updateControls();
}

function clearQueuedNote(sayId) {
  if (sayId === undefined || sayId === null) return;
  const bubble = ui.logs.querySelector(`[data-say-id="${CSS.escape(String(sayId))}"]`);
  if (bubble) setNote(bubble, "");
}

function onDelta(frame) {
  const turn = state.turns.get(frame.turn);
  if (!turn || turn.ended) return;
  const at = Number(frame.at) || 0;
  // Usually `at` equals what we have and we just append; a smaller `at`
  // (a snapshot or an overlapping replay) rewrites from that offset.
  turn.text = at >= turn.chars ? turn.text + frame.text : cutCodePoints(turn.text, at) + frame.text;
  turn.chars = codePoints(turn.text);
  renderTurnText(turn);
  scheduleSeen(turn);
  const log = logFor(turn.npc);
  scrollToEnd(log);
}

function renderTurnText(turn, kept = turn.chars) {
  const keptText = kept >= turn.chars ? turn.text : cutCodePoints(turn.text, kept);
  $(".kept", turn.node).textContent = keptText;
  $(".forgotten", turn.node).textContent = turn.text.slice(keptText.length);
  turn.node.classList.toggle("waiting", turn.chars === 0 && !turn.ended);
}

function onTurnEnd(frame) {
  const turn = state.turns.get(frame.turn);
  if (turn) endTurn(turn, frame);
}

function endTurn(turn, { reason, kept, chars }) {
  turn.ended = true;
  clearTimeout(turn.seenTimer);
  turn.node.dataset.state = "ended";
  turn.node.dataset.reason = reason;
  if (typeof kept === "number") turn.node.dataset.kept = String(kept);
  if (typeof chars === "number") turn.node.dataset.chars = String(chars);
  $(".badge", turn.node).textContent = REASON_BADGES[reason] ?? "";
  // After a cut, show what the NPC will remember: anything past `kept` is
  // struck through. A turn that ran to its end was seen whole, whatever
  // `kept` says (it can trail by the last throttled `seen`).
  const cut = reason !== "done" && typeof kept === "number";
  renderTurnText(turn, cut ? kept : turn.chars);
  updateControls();
}

/** Tell the server how much the player has seen, at most every SEEN_EVERY_MS. */
function scheduleSeen(turn) {
  if (turn.seenTimer) return;
  turn.seenTimer = setTimeout(() => {
    turn.seenTimer = null;
    if (turn.ended || turn.chars <= turn.seenSent) return;
    if (send({ t: "seen", turn: turn.id, shown: turn.chars })) turn.seenSent = turn.chars;
  }, SEEN_EVERY_MS);
}

function activeTurn(npcId) {
  let found = null;
  for (const turn of state.turns.values()) {
    if (turn.npc === npcId && !turn.ended) found = turn; // newest wins
  }
  return found;
}

function interruptCurrent() {
  const turn = activeTurn(state.current);
  if (!turn || turn.interrupting || !isOpen()) return;
  const id = newId();
  state.pending.set(id, { kind: "interrupt", turn: turn.id });
  // `shown` is exactly what is on screen, so the NPC remembers no more than that.
  send({ t: "interrupt", id, turn: turn.id, shown: turn.chars });
  turn.interrupting = true;
  updateControls();
}

// --- the player's messages ----------------------------------------------

function playerBubble(name, text, own) {
  const bubble = el(
    "article",
    { class: `msg msg-player${own ? " own" : ""}`, dataset: { testid: own ? "player-msg" : "other-msg" } },
    el(
      "div",
      { class: "bubble" },
      el(
        "header",
        { class: "msg-head" },
        el("span", { class: "msg-name" }, own ? "You" : name),
        el("span", { class: "msg-note" }),
      ),
      el("p", { class: "msg-text" }, text),
    ),
  );
  return bubble;
}

function setNote(bubble, text) {
  $(".msg-note", bubble).textContent = text;
}

function sayCurrent() {
  const text = ui.input.value.trim();
  if (!text || !state.current || !isOpen()) return;
  const id = newId();
  const bubble = playerBubble(state.player, text, true);
  bubble.dataset.sayId = String(id);
  appendToLog(state.current, bubble);
  scrollToEnd(logFor(state.current), true);
  state.pending.set(id, { kind: "say", bubble, npc: state.current });
  send({ t: "say", id, npc: state.current, text, room: state.room ?? undefined });
  ui.input.value = "";
  stopTyping(true);
}

function markSayFailed(request, message) {
  request.bubble.classList.add("failed");
  setNote(request.bubble, message);
}

function onComposerInput() {
  if (!state.room || !isOpen()) return;
  // Tell the room once when typing starts, and again only when it stops.
  if (!state.typingTimer) send({ t: "typing", on: true, npc: state.current ?? undefined, room: state.room });
  clearTimeout(state.typingTimer);
  state.typingTimer = setTimeout(() => stopTyping(true), TYPING_IDLE_MS);
}

function stopTyping(notify) {
  if (!state.typingTimer) return;
  clearTimeout(state.typingTimer);
  state.typingTimer = null;
  if (notify && state.room) send({ t: "typing", on: false, npc: state.current ?? undefined, room: state.room });
}

// --- actions -------------------------------------------------------------

function onAction(frame) {
  const turn = state.turns.get(frame.turn);
  const card = fromTemplate("tpl-action-card");
  const action = { id: frame.action, turn: frame.turn, approval: frame.approval === true, card };
  card.dataset.action = frame.action;
  card.dataset.name = frame.name;
  $(".action-name", card).textContent = humanize(frame.name);
  $(".action-args", card).replaceChildren(...argChips(frame.args));
  $('[data-testid="approve-button"]', card).addEventListener("click", () => answer(action, true));
  $('[data-testid="decline-button"]', card).addEventListener("click", () => answer(action, false));
  state.actions.set(action.id, action);
  setActionStatus(action, action.approval ? "waiting" : "pending");
  if (turn) $(".msg-actions", turn.node).append(card);
  else appendToLog(state.current ?? frame.npc, card);
}

function argChips(args) {
  if (!args || typeof args !== "object") return [];
  return Object.entries(args).map(([key, value]) =>
    el("span", { class: "chip" }, `${humanize(key)}: ${typeof value === "object" ? JSON.stringify(value) : value}`),
  );
}

function answer(action, accept) {
  if (!isOpen()) return;
  const id = newId();
  state.pending.set(id, { kind: "act", action: action.id });
  send({ t: "act", id, action: action.id, accept });
  setActionStatus(action, "sending");
}

function onActionEnd(frame) {
  const action = state.actions.get(frame.action);
  if (action) setActionStatus(action, frame.status);
}

function setActionStatus(action, status) {
  const card = action.card;
  card.dataset.status = status;
  $(".action-status", card).textContent = ACTION_STATUS_TEXT[status] ?? humanize(status);
  const answerable = action.approval && (status === "waiting" || status === "sending");
  $(".action-controls", card).hidden = !answerable;
  for (const button of card.querySelectorAll(".action-controls button")) {
    button.disabled = status !== "waiting";
  }
}

// --- rooms ---------------------------------------------------------------

function joinRoom(room) {
  if (!room || !isOpen()) return;
  const id = newId();
  state.pending.set(id, { kind: "join", room });
  send({ t: "join", id, room });
}

function leaveRoom() {
  if (!state.room || !isOpen()) return;
  const id = newId();
  state.pending.set(id, { kind: "leave", room: state.room });
  send({ t: "leave", id, room: state.room });
}

function enterRoom(room) {
  if (state.room === room) return;
  state.room = room;
  ui.roomForm.hidden = true;
  ui.roomCurrent.hidden = false;
  $(".room-name", ui.roomCurrent).textContent = room;
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

function onSaid(frame) {
  feed(`${frame.player} to ${npcName(frame.npc)}: “${frame.text}”`, "said");
  appendToLog(frame.npc, playerBubble(frame.player, frame.text, false));
  showTyping(frame.player, false);
}

function onPresence(frame) {
  const verb = frame.state === "joined" ? "joined" : "left";
  feed(`${frame.player} ${verb} ${frame.room}.`, "presence");
  if (verb === "left") showTyping(frame.player, false);
}

function onTyping(frame) {
  showTyping(frame.player, frame.on === true);
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
  const open = isOpen() && !state.stopped;
  const chosen = Boolean(state.current);
  ui.input.disabled = !open || !chosen;
  ui.send.disabled = !open || !chosen;
  ui.roomJoin.disabled = !open;
  ui.roomLeave.disabled = !open;
  const turn = chosen ? activeTurn(state.current) : null;
  ui.interrupt.disabled = !open || !turn || turn.interrupting === true;
  ui.input.placeholder = !chosen
    ? "Choose someone to talk to…"
    : `Say something to ${npcName(state.current)}${state.room ? ` in ${state.room}` : ""}…`;
  ui.stageStatus.textContent = !chosen
    ? ""
    : turn
      ? `${turn.chars === 0 ? "is thinking" : "is speaking"}${turn.player !== state.player ? ` to ${turn.player}` : ""}…`
      : "is listening";
  ui.stageStatus.classList.toggle("live", Boolean(turn));
  for (const card of ui.npcList.querySelectorAll(".npc-card")) {
    card.classList.toggle("speaking", Boolean(activeTurn(card.dataset.npc)));
  }
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
