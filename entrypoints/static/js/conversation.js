// The conversation: the thread's timeline (GET /api/threads/{id}/timeline, a page at a time from the
// end, each run redrawn from its stored events exactly as it is drawn live) merged with live runs,
// without redrawing what is already there. Older pages come on scrolling up or "Load earlier".
import { api } from "./api.js";
import { showPendingApprovals } from "./approvals.js";
import { showComposerError, updateComposer } from "./composer.js";
import { h } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { userBubble } from "./run_render.js";
import { RunView } from "./run_view.js";
import { liveRunsForCurrentThread, state, ui } from "./state.js";

export const PAGE = 50; // messages per timeline page: 25 runs
const TERMINAL = new Set(["completed", "failed", "cancelled"]);

// What to do when the open thread turns out to be deleted (app.js: clear the hash, redraw the sidebar).
let onThreadGone = () => {};
export function whenThreadGone(fn) {
  onThreadGone = fn;
}
// What an edit of a past message does (threads.js: fork and resend). A hook: threads.js is above.
let onEdit = () => {};
export function whenEditAsked(fn) {
  onEdit = fn;
}

const staticAnswers = new Map(); // message_id -> the node of an answer drawn without its run
const loadEarlier = h("button", {
  type: "button", class: "button button-secondary load-earlier", "data-testid": "load-earlier",
}, "Load earlier messages");
loadEarlier.addEventListener("click", () => loadOlder());

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

/** The loaded timeline of the open thread, oldest first, each message once (its latest copy), or null. */
function loadedItems() {
  const hist = state.history;
  if (hist.threadId !== state.threadId || !hist.pages.length) return null;
  const latest = new Map();
  for (const page of hist.pages) {
    for (const item of page) {
      const id = item && item.message && item.message.message_id;
      if (typeof id === "string") latest.set(id, item);
    }
  }
  return Array.from(latest.values()).sort((a, b) => a.order - b.order);
}

/** Bring a run's view up to its stored events (the same apply() as live); ask for the rest live. */
function syncRun(rv, run) {
  const events = (Array.isArray(run.events) ? run.events : [])
    .filter((e) => e && typeof e.seq === "number").sort((a, b) => a.seq - b.seq);
  if (events.length && events[0].seq === 1 && rv.firstSeq > 1) {
    rv.reset(); // the page saw only the end of this run: draw all of it
    rv.lastSeq = 0;
  }
  for (const event of events) {
    if (event.seq <= rv.lastSeq) continue;
    rv.lastSeq = event.seq;
    rv.apply(event);
  }
  if (rv.done) return;
  if (TERMINAL.has(run.status)) {
    rv.checkStatus();
  } else {
    rv.replayRequested = false; // resume by run_id from where the history ends, then live
    rv.requestReplay();
  }
}

function userNode(rv, existing, m) {
  const node = (rv && rv.userEl) || existing.get(m.message_id) || userBubble(m.text, m.message_id);
  node.dataset.messageId = m.message_id;
  if (!node.querySelector(".edit-message")) {
    const edit = h("button", {
      type: "button", class: "button button-link edit-message", "data-testid": "edit-message",
      "aria-label": "Edit this message and send it again",
    }, "Edit");
    edit.addEventListener("click", () => onEdit(node.dataset.messageId, m.text, node));
    node.append(edit);
  }
  return node;
}

function answerNode(m) {
  let node = staticAnswers.get(m.message_id);
  if (!node) {
    node = h("div", {
      class: "run", "data-testid": "run-timeline", "data-run-id": m.run_id || "", "data-message-id": m.message_id,
      "data-status": "completed",
    }, h("div", { class: "answer", "data-testid": "answer" }, renderMarkdown(m.text)));
    staticAnswers.set(m.message_id, node);
  }
  return node;
}

/** Draw the open thread: its loaded timeline and the live runs this page knows. Nodes stay in place. */
export function renderConversation() {
  const items = loadedItems();
  const desired = [];
  const placed = new Set();
  const existing = new Map();
  for (const node of ui.conversation.children) {
    if (node.dataset.messageId) existing.set(node.dataset.messageId, node);
  }
  const drawnRuns = new Set();
  for (const item of items || []) {
    if (item.run && typeof item.run.run_id === "string") drawnRuns.add(item.run.run_id);
  }
  if (state.history.before && items) desired.push(loadEarlier);
  for (const item of items || []) {
    const m = item.message;
    if (m.role === "user") {
      const runId = (item.run && item.run.run_id) || m.run_id;
      let rv = runId ? state.runs.get(runId) : null;
      desired.push(userNode(rv, existing, m));
      if (item.run && !rv) {
        rv = new RunView({ runId, threadId: state.threadId, text: m.text });
        state.runs.set(runId, rv);
      }
      if (!rv) continue;
      rv.userEl = desired[desired.length - 1];
      if (item.run) syncRun(rv, item.run);
      placed.add(rv);
      desired.push(rv.el);
    } else if (m.role === "assistant" && !(m.run_id && (drawnRuns.has(m.run_id) || state.runs.get(m.run_id)?.userEl))) {
      desired.push(answerNode(m));
    }
  }
  const extra = liveRunsForCurrentThread().filter((rv) => !placed.has(rv)).sort((a, b) => a.order - b.order);
  for (const rv of extra) desired.push(rv.userEl, rv.el);

  keepingScroll(() => {
    const keep = new Set(desired);
    for (const node of Array.from(ui.conversation.children)) {
      if (!keep.has(node)) node.remove();
    }
    let cursor = ui.conversation.firstElementChild;
    for (const node of desired) {
      if (node === cursor) cursor = cursor.nextElementSibling;
      else ui.conversation.insertBefore(node, cursor);
    }
  });
  const empty = desired.length === 0;
  ui.emptyState.hidden = !(empty && (items !== null || state.threadId === null));
  ui.conversation.classList.toggle("is-empty", empty);
  showPendingApprovals();
  updateComposer();
}

let historyTimer = null;
export function scheduleHistoryReload(delay = 300) {
  clearTimeout(historyTimer);
  historyTimer = setTimeout(() => { loadHistory(); }, delay);
}

async function fetchPage(threadId, before) {
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (before) query.set("before", before);
  return api(`/api/threads/${encodeURIComponent(threadId)}/timeline?${query}`);
}

function numbered(items, from) {
  return (Array.isArray(items) ? items : []).filter((i) => i && i.message).map((item, n) => ({ ...item, order: from + n }));
}

/** The newest page of the open thread's timeline, merged with what is drawn. */
export async function loadHistory({ quiet = false } = {}) {
  const threadId = state.threadId;
  const request = ++state.historyRequest;
  if (!threadId || !state.token) {
    renderConversation();
    return;
  }
  if (quiet) ui.conversation.setAttribute("aria-live", "off"); // don't read a whole old chat aloud
  ui.conversation.setAttribute("aria-busy", "true");
  try {
    const data = await fetchPage(threadId, null);
    if (request !== state.historyRequest || threadId !== state.threadId) return;
    const hist = state.history;
    if (hist.threadId !== threadId) Object.assign(hist, { threadId, pages: [], before: null, order: 0 });
    if (!hist.pages.length) hist.before = data.before || null;
    hist.pages.push(numbered(data.items, hist.order));
    hist.order += PAGE + 1;
    renderConversation();
    if (quiet) scrollToBottom();
  } catch (error) {
    if (request !== state.historyRequest) return;
    if (error.status === 404) {
      showComposerError("That chat does not exist any more. Starting a new one.");
      state.threadId = null;
      onThreadGone();
      renderConversation();
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

/** The page before the oldest one drawn; the view stays where it was. */
export async function loadOlder() {
  const hist = state.history;
  const threadId = state.threadId;
  if (!hist.before || hist.loadingOlder || hist.threadId !== threadId) return;
  hist.loadingOlder = true;
  loadEarlier.disabled = true;
  loadEarlier.textContent = "Loading…";
  const hadFocus = document.activeElement === loadEarlier;
  try {
    const data = await fetchPage(threadId, hist.before);
    if (hist.threadId !== threadId || state.threadId !== threadId) return;
    const oldest = Math.min(...hist.pages.flat().map((i) => i.order), 0);
    hist.pages.unshift(numbered(data.items, oldest - PAGE - 1));
    hist.before = data.before || null;
    const c = ui.conversation;
    const fromBottom = c.scrollHeight - c.scrollTop;
    ui.conversation.setAttribute("aria-live", "off");
    renderConversation();
    c.scrollTop = c.scrollHeight - fromBottom;
    setTimeout(() => ui.conversation.setAttribute("aria-live", "polite"), 50);
    if (hadFocus && !loadEarlier.isConnected) ui.conversation.focus();
  } catch (error) {
    if (error.status !== 401) showComposerError(`Could not load earlier messages: ${error.message}`);
  } finally {
    hist.loadingOlder = false;
    loadEarlier.disabled = false;
    loadEarlier.textContent = "Load earlier messages";
  }
}

ui.conversation.addEventListener("scroll", () => {
  if (ui.conversation.scrollTop < 80 && state.history.before && !state.history.loadingOlder) loadOlder();
}, { passive: true });
