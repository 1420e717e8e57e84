// Composing and sending: a message becomes a RunView and a chat frame, sent again until acked; Stop.
import { autosize, activeRunsInView, hideComposerError, updateComposer } from "./composer.js";
import { scrollToBottom } from "./conversation.js";
import { randomId } from "./dom.js";
import { userBubble } from "./run_render.js";
import { RunView } from "./run_view.js";
import { conn, send } from "./socket.js";
import { state, ui } from "./state.js";

function chatFrame(rv) {
  const frame = { type: "chat", message: rv.text, client_message_id: rv.clientMessageId };
  if (rv.threadId) frame.thread_id = rv.threadId;
  return frame;
}

export function sendChat(rv) {
  if (rv.done || rv.cancelRequested) return;
  if (rv.awaitingThread) {
    rv.setWaiting("Waiting for the chat to be created…");
    return;
  }
  rv.sent = send(chatFrame(rv)) || rv.sent;
  rv.setWaiting(conn.ready ? "Sending…" : "Waiting for the connection…");
}

export function submitMessage(text) {
  const message = typeof text === "string" ? text : ui.input.value;
  if (!message.trim()) {
    ui.input.focus();
    return;
  }
  hideComposerError();
  const rv = new RunView({ clientMessageId: randomId("cm"), threadId: state.threadId, text: message });
  rv.userEl = userBubble(message, null);
  // In a brand-new chat, a second message waits for the first one's thread instead of opening another.
  if (state.threadId === null) {
    rv.awaitingThread = [...state.pending.values()].some((p) => p.threadId === null && !p.done);
  }
  state.pending.set(rv.clientMessageId, rv);
  ui.emptyState.hidden = true;
  ui.conversation.classList.remove("is-empty");
  ui.conversation.append(rv.userEl, rv.el);
  scrollToBottom();
  if (typeof text !== "string") {
    ui.input.value = "";
    autosize();
  }
  sendChat(rv);
  updateComposer();
}

export function stopRuns() {
  for (const rv of activeRunsInView()) rv.requestCancel();
  updateComposer();
  ui.input.focus();
}
