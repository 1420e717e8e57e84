// The conversation: history merged with live runs, without redrawing what is already there.
import { api } from "./api.js";
import { showPendingApprovals } from "./approvals.js";
import { showComposerError, updateComposer } from "./composer.js";
import { h } from "./dom.js";
import { userBubble } from "./run_render.js";
import { RunView } from "./run_view.js";
import { liveRunsForCurrentThread, state, ui } from "./state.js";

// What to do when the open thread turns out to be deleted (app.js: clear the hash, redraw the sidebar).
// A hook, because threads.js sits above this module and calls into it.
let onThreadGone = () => {};
export function whenThreadGone(fn) {
  onThreadGone = fn;
}

function isNearBottom() {
  const c = ui.conversation;
  return c.scrollHeight - c.scrollTop - c.clientHeight < 120;
}

export function scrollToBottom() {
  ui.conversation.scrollTop = ui.conversation.scrollHeight;
}

/** Run fn (which changes the conversation) and keep the view pinned to the bottom if it was. */
export function keepingScroll(fn) {
  const pinned = isNearBottom();
  fn();
  if (pinned) scrollToBottom();
}

/**
 * Draw the current thread. messages: the thread's history from the server, or null to draw only
 * what this page already knows (live runs). Nodes already on the page are kept in place.
 */
export function renderConversation(messages) {
  const desired = [];
  const placed = new Set();
  const existingUsers = new Map();
  for (const node of ui.conversation.children) {
    if (node.dataset.messageId) existingUsers.set(node.dataset.messageId, node);
  }
  const answers = new Map();
  for (const m of messages || []) {
    if (m.role === "assistant" && m.run_id) answers.set(m.run_id, m);
  }
  const toCheck = [];
  for (const m of messages || []) {
    if (m.role === "user") {
      let rv = m.run_id ? state.runs.get(m.run_id) : null;
      let userEl = (rv && rv.userEl) || existingUsers.get(m.message_id) || userBubble(m.text, m.message_id);
      userEl.dataset.messageId = m.message_id;
      desired.push(userEl);
      if (!m.run_id) continue;
      if (!rv) {
        rv = new RunView({ runId: m.run_id, threadId: state.threadId, text: m.text });
        state.runs.set(m.run_id, rv);
      }
      rv.userEl = userEl;
      placed.add(rv);
      desired.push(rv.el);
      const answer = answers.get(m.run_id);
      if (answer && !rv.done) {
        if (rv.lastSeq === 0) rv.fromHistory = true;
        rv.showFinalText(answer.text);
      } else if (!answer && !rv.done) {
        toCheck.push(rv);
      }
    } else if (m.role === "assistant" && !m.run_id) {
      const node = existingUsers.get(m.message_id) || h("div", {
        class: "run", "data-testid": "run-timeline", "data-run-id": "", "data-message-id": m.message_id,
      }, h("div", { class: "answer", "data-testid": "answer" }, m.text));
      desired.push(node);
    }
  }
  const extra = liveRunsForCurrentThread().filter((rv) => !placed.has(rv)).sort((a, b) => a.order - b.order);
  for (const rv of extra) desired.push(rv.userEl, rv.el);

  keepingScroll(() => {
    // Reconcile: keep nodes that stay, move or insert the rest, remove what is gone.
    const keep = new Set(desired);
    for (const node of Array.from(ui.conversation.children)) {
      if (!keep.has(node)) node.remove();
    }
    let cursor = ui.conversation.firstElementChild;
    for (const node of desired) {
      if (node === cursor) {
        cursor = cursor.nextElementSibling;
      } else {
        ui.conversation.insertBefore(node, cursor);
      }
    }
  });
  const empty = desired.length === 0;
  ui.emptyState.hidden = !(empty && (messages !== null || state.threadId === null));
  ui.conversation.classList.toggle("is-empty", empty);
  showPendingApprovals();
  for (const rv of toCheck) rv.checkStatus();
  updateComposer();
}

let historyTimer = null;
export function scheduleHistoryReload(delay = 300) {
  clearTimeout(historyTimer);
  historyTimer = setTimeout(() => { loadHistory(); }, delay);
}

export async function loadHistory({ quiet = false } = {}) {
  const threadId = state.threadId;
  const request = ++state.historyRequest;
  if (!threadId || !state.token) {
    renderConversation([]);
    return;
  }
  if (quiet) ui.conversation.setAttribute("aria-live", "off"); // don't read a whole old chat aloud
  ui.conversation.setAttribute("aria-busy", "true");
  try {
    const data = await api(`/api/threads/${encodeURIComponent(threadId)}/messages`);
    if (request !== state.historyRequest || threadId !== state.threadId) return;
    renderConversation(Array.isArray(data && data.messages) ? data.messages : []);
    if (quiet) scrollToBottom();
  } catch (error) {
    if (request !== state.historyRequest) return;
    if (error.status === 404) {
      showComposerError("That chat does not exist any more. Starting a new one.");
      state.threadId = null;
      onThreadGone();
      renderConversation([]);
    } else if (error.status !== 401) {
      showComposerError(`Could not load this chat: ${error.message}`);
    }
  } finally {
    if (request === state.historyRequest) {
      ui.conversation.setAttribute("aria-busy", "false");
      if (quiet) setTimeout(() => ui.conversation.setAttribute("aria-live", "polite"), 50);
    }
  }
}
