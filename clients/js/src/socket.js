// One WebSocket of a session: open it, send `hello`, wait for `welcome`, then
// hand every frame to the client. Works with the browser's WebSocket, Node's
// global one (Node 22+, or 20 with --experimental-websocket) and the `ws`
// package, which all share the same event interface.

import { decode, encode } from "@msgpack/msgpack";

import { ConnectionClosedError, ProtocolError, ServerUnreachable } from "./errors.js";

/** A server message as a frame, or null if it is not a msgpack map with a string `t`. */
export function decodeFrame(data) {
  let bytes;
  if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
  else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  else return null; // v1 servers send binary messages only
  let value;
  try {
    value = decode(bytes);
  } catch {
    return null;
  }
  const isMap = value !== null && typeof value === "object" && !Array.isArray(value);
  return isMap && typeof value.t === "string" ? value : null;
}

/** A frame as bytes; undefined keys are left out rather than sent as nil. */
export function encodeFrame(frame) {
  return encode(frame, { ignoreUndefined: true });
}

/**
 * Open `url` and complete the handshake. `onWelcome(socket, welcome)` runs
 * synchronously on the welcome, before any later frame is delivered to
 * `onFrame`; `onClose(socket, code, reason)` runs once when the live socket closes.
 */
export function openSocket({ url, WebSocket, hello, timeoutMs, onWelcome, onFrame, onClose }) {
  return new Promise((resolve, reject) => {
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (err) {
      reject(new ServerUnreachable(url, err?.message ?? String(err)));
      return;
    }
    ws.binaryType = "arraybuffer";
    let opened = false;
    let live = false;
    let failure = "";
    const fail = (error) => {
      clearTimeout(timer);
      reject(error);
    };
    const timer = setTimeout(() => {
      ws.onclose = null;
      ws.close();
      fail(opened ? new ProtocolError(`no welcome within ${timeoutMs} ms`) : new ServerUnreachable(url, "timed out"));
    }, timeoutMs);
    ws.onopen = () => {
      opened = true;
      ws.send(encodeFrame(hello));
    };
    ws.onerror = (event) => {
      failure = event?.message || event?.error?.message || failure;
    };
    ws.onmessage = (event) => {
      if (live) {
        onFrame(ws, event.data);
        return;
      }
      const welcome = decodeFrame(event.data);
      if (!welcome || welcome.t !== "welcome") {
        ws.onclose = null;
        ws.close();
        fail(new ProtocolError(`expected welcome, got ${JSON.stringify(welcome)?.slice(0, 100)}`));
        return;
      }
      clearTimeout(timer);
      live = true;
      onWelcome(ws, welcome);
      resolve(ws);
    };
    ws.onclose = (event) => {
      if (live) {
        onClose(ws, event.code ?? 1006, event.reason ?? "");
        return;
      }
      if (!opened) fail(new ServerUnreachable(url, failure || "connection failed"));
      else fail(new ConnectionClosedError(event.code ?? 1006, event.reason ?? ""));
    };
  });
}

/** Whether a socket can send now (1 is OPEN in every implementation). */
export function isOpen(ws) {
  return ws !== null && ws.readyState === 1;
}
