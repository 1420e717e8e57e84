// The WebSocket itself: authenticate, send, heartbeat, reconnect with backoff, the reconnecting banner.
import { state, ui } from "./state.js";

const HEARTBEAT_MS = 25000;
const PONG_TIMEOUT_MS = 10000;

// Set by app.js: where parsed frames go (connection.js), and what a rejected token does (log out).
let onFrame = () => {};
let onSessionExpired = () => {};
export function setSocketHandlers(handlers) {
  onFrame = handlers.onFrame;
  onSessionExpired = handlers.onSessionExpired;
}

export const conn = {
  ws: null,
  ready: false,
  attempt: 0,
  retryTimer: null,
  heartbeatTimer: null,
  pongTimer: null,
  everReady: false,
};

export function send(frame) {
  if (!conn.ws || !conn.ready || conn.ws.readyState !== WebSocket.OPEN) return false;
  try {
    conn.ws.send(JSON.stringify(frame));
    return true;
  } catch {
    return false;
  }
}

export function connect() {
  clearTimeout(conn.retryTimer);
  conn.retryTimer = null;
  if (!state.token) return;
  if (conn.ws && (conn.ws.readyState === WebSocket.CONNECTING || conn.ws.readyState === WebSocket.OPEN)) return;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  let ws;
  try {
    ws = new WebSocket(`${scheme}//${location.host}/ws`);
  } catch {
    lostConnection();
    return;
  }
  conn.ws = ws;
  conn.ready = false;
  ws.addEventListener("open", () => {
    if (conn.ws !== ws) return;
    // The token goes in the first frame, never in the URL.
    ws.send(JSON.stringify({ type: "auth", token: state.token }));
  });
  ws.addEventListener("message", (event) => {
    if (conn.ws !== ws) return;
    clearTimeout(conn.pongTimer);
    let frame;
    try { frame = JSON.parse(event.data); } catch { return; }
    if (frame && typeof frame === "object") onFrame(frame);
  });
  ws.addEventListener("close", (event) => {
    if (conn.ws !== ws) return;
    conn.ws = null;
    conn.ready = false;
    stopHeartbeat();
    if (!state.token) return;
    if (event.code === 4401) {
      onSessionExpired();
      return;
    }
    lostConnection(event.code);
  });
}

export function disconnect() {
  clearTimeout(conn.retryTimer);
  conn.retryTimer = null;
  stopHeartbeat();
  const ws = conn.ws;
  conn.ws = null;
  conn.ready = false;
  conn.attempt = 0;
  conn.everReady = false;
  if (ws) {
    try { ws.close(1000, "logout"); } catch { /* already closed */ }
  }
}

function lostConnection(code) {
  const delay = Math.min(10000, 500 * 2 ** conn.attempt);
  conn.attempt += 1;
  showBanner(code === 1001 || code === 1013 ? "The server is restarting. Reconnecting…" : "Connection lost. Reconnecting…");
  for (const rv of state.pending.values()) {
    if (!rv.done) rv.setWaiting("Waiting for the connection…");
  }
  clearTimeout(conn.retryTimer);
  conn.retryTimer = setTimeout(connect, delay);
}

export function retryNow() {
  if (!state.token || conn.ws) return;
  conn.attempt = Math.max(0, conn.attempt - 1);
  connect();
}

function showBanner(text) {
  ui.bannerText.textContent = text || "Reconnecting…";
  ui.banner.hidden = false;
}

export function hideBanner() {
  ui.banner.hidden = true;
}

export function startHeartbeat() {
  stopHeartbeat();
  conn.heartbeatTimer = setInterval(() => {
    if (!send({ type: "ping" })) return;
    clearTimeout(conn.pongTimer);
    conn.pongTimer = setTimeout(() => {
      // Nothing heard back: the socket is dead without having said so. Drop it and reconnect.
      const ws = conn.ws;
      conn.ws = null;
      conn.ready = false;
      stopHeartbeat();
      if (ws) { try { ws.close(4000, "no pong"); } catch { /* ignore */ } }
      lostConnection();
    }, PONG_TIMEOUT_MS);
  }, HEARTBEAT_MS);
}

function stopHeartbeat() {
  clearInterval(conn.heartbeatTimer);
  clearTimeout(conn.pongTimer);
  conn.heartbeatTimer = null;
  conn.pongTimer = null;
}
