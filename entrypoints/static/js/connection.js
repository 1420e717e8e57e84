// What arrives over the WebSocket: ready (resume and resend), acks, errors, and run events.
import { approvalRefused, loadPendingApprovals } from "./approvals.js";
import { autosize, showComposerError, updateComposer } from "./composer.js";
import { keepingScroll, loadHistory, scheduleHistoryReload } from "./conversation.js";
import { storageSet } from "./dom.js";
import { RunView } from "./run_view.js";
import { sendChat } from "./sending.js";
import { conn, hideBanner, send, startHeartbeat } from "./socket.js";
import { CURSOR_KEY, state, ui } from "./state.js";
import { loadThreads, scheduleThreadsReload, writeHash } from "./threads.js";

const TERMINAL = new Set(["agent_completed", "agent_error", "agent_cancelled"]);

export function onFrame(frame) {
  switch (frame.type) {
    case "ready":
      onReady();
      return;
    case "ack":
      onAck(frame);
      return;
    case "error":
      onErrorFrame(frame);
      return;
    case "pong":
      return;
    case "resync":
      // The cursor is older than what the server keeps: reload over HTTP instead.
      state.lastCursor = null;
      storageSet(CURSOR_KEY, null);
      scheduleThreadsReload(0);
      scheduleHistoryReload(0);
      return;
    default:
      if (typeof frame.run_id === "string" && typeof frame.seq === "number") onEvent(frame);
  }
}

function onReady() {
  conn.ready = true;
  conn.attempt = 0;
  conn.everReady = true;
  hideBanner();
  startHeartbeat();
  // Runs still going, from the last event drawn (history or live), then everything
  // after the last cursor this tab saw. A server without resume answers unknown_type: ignored.
  for (const rv of state.runs.values()) {
    if (!rv.done && rv.runId && rv.userEl && rv.userEl.isConnected) {
      rv.replayRequested = false;
      rv.requestReplay();
    }
  }
  if (state.lastCursor) send({ type: "resume", cursor: state.lastCursor });
  // Messages whose ack never came: the same client_message_id again starts at most one run.
  for (const rv of [...state.pending.values()].sort((a, b) => a.order - b.order)) {
    if (rv.done) continue;
    if (rv.cancelRequested) {
      if (rv.sent) send({ type: "cancel", client_message_id: rv.clientMessageId });
      else rv.cancelled({ reason: "user" });
    } else {
      sendChat(rv);
    }
  }
  // Whatever happened while away: the thread list and this chat's history, merged in place.
  loadThreads();
  if (state.threadId) loadHistory();
  loadPendingApprovals();
  updateComposer();
}

function onAck(frame) {
  const rv = state.pending.get(frame.client_message_id);
  if (!rv) {
    if (frame.thread_id && !state.threads.some((t) => t.thread_id === frame.thread_id)) scheduleThreadsReload();
    return;
  }
  state.pending.delete(frame.client_message_id);
  const known = state.runs.get(frame.run_id);
  if (known && known !== rv) {
    // History already drew this run (a reload raced the ack): keep one of the two.
    known.userEl?.remove();
    known.el.remove();
  }
  rv.setRunId(frame.run_id);
  const createdThread = rv.threadId === null;
  rv.threadId = frame.thread_id;
  state.runs.set(frame.run_id, rv);
  if (!rv.done) {
    rv.setStatus(frame.status || "running");
    if (rv.lastSeq === 0) rv.setWaiting(frame.status === "queued" ? "Queued: waiting for the reply before it…" : "Working…");
  }
  if (rv.cancelRequested && !rv.done) send({ type: "cancel", run_id: frame.run_id });
  if (createdThread) {
    if (state.threadId === null && rv.el.isConnected) {
      state.threadId = frame.thread_id;
      writeHash(frame.thread_id, { replace: true });
    }
    for (const other of state.pending.values()) {
      if (other.awaitingThread) {
        other.awaitingThread = false;
        other.threadId = frame.thread_id;
        sendChat(other);
      }
    }
  }
  if (["completed", "failed", "cancelled"].includes(frame.status) && rv.lastSeq === 0) {
    // A retried message whose run already ended while we were away.
    rv.statusCheckedAt = 0;
    rv.checkStatus();
  }
  scheduleThreadsReload(createdThread ? 0 : 250);
  updateComposer();
}

function onErrorFrame(frame) {
  if (frame.code === "unknown_type") return; // e.g. a server that does not know "resume" yet
  if (approvalRefused(frame)) return; // the approval card says so
  const rv = frame.client_message_id ? state.pending.get(frame.client_message_id) : null;
  if (rv && !rv.done) {
    if (rv.cancelRequested) {
      rv.cancelled({ reason: "user" });
      return;
    }
    rv.failed({ message: frame.message || "The server did not accept this message." });
    // Give the words back so they can be sent again.
    if (!ui.input.value && rv.text) {
      ui.input.value = rv.text;
      autosize();
    }
  }
  showComposerError(frame.message || "The server did not accept that.");
}

function onEvent(event) {
  if (typeof event.cursor === "string" && event.cursor) {
    state.lastCursor = event.cursor;
    storageSet(CURSOR_KEY, event.cursor);
  }
  let rv = state.runs.get(event.run_id);
  if (!rv) {
    // A run this page has not drawn: another tab or device, or one that started while away.
    rv = new RunView({ runId: event.run_id, threadId: event.thread_id });
    state.runs.set(event.run_id, rv);
    if (event.thread_id === state.threadId) scheduleHistoryReload(150);
    if (!state.threads.some((t) => t.thread_id === event.thread_id)) scheduleThreadsReload();
  }
  if (event.seq <= rv.lastSeq) return; // already drawn
  if (rv.done) {
    if (rv.fromHistory && event.seq === 1) {
      rv.reset(); // the server replays the whole run: draw its tool calls too
    } else {
      rv.lastSeq = event.seq;
      return;
    }
  }
  rv.lastSeq = event.seq;
  if (rv.el.isConnected) keepingScroll(() => rv.apply(event));
  else rv.apply(event);
  if (TERMINAL.has(event.type)) {
    scheduleThreadsReload();
    updateComposer();
  }
}
