// The threads sidebar and the location hash: list, open, start and delete chats.
import { api } from "./api.js";
import { loadPendingApprovals, threadIsAsking } from "./approvals.js";
import { hideComposerError, showComposerError } from "./composer.js";
import { loadHistory, renderConversation } from "./conversation.js";
import { h, formatWhen } from "./dom.js";
import { closeSidebar } from "./sidebar.js";
import { NARROW, state, ui } from "./state.js";

export function threadFromHash() {
  const match = /^#thread=([^&]+)$/.exec(location.hash);
  if (!match) return null;
  try { return decodeURIComponent(match[1]); } catch { return null; }
}

export function writeHash(threadId, { replace = false } = {}) {
  const target = threadId ? `#thread=${encodeURIComponent(threadId)}` : "";
  if (location.hash === target || (!target && !location.hash)) return;
  const url = target || location.pathname + location.search;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
}

let threadsTimer = null;
export function scheduleThreadsReload(delay = 250) {
  clearTimeout(threadsTimer);
  threadsTimer = setTimeout(() => { loadThreads().catch(() => {}); }, delay);
}

export async function loadThreads() {
  if (!state.token) return;
  try {
    const data = await api("/api/threads");
    const threads = Array.isArray(data && data.threads) ? data.threads : [];
    state.threads = threads.slice().sort((a, b) => (Date.parse(b.updated_at) || 0) - (Date.parse(a.updated_at) || 0));
    renderThreads();
  } catch (error) {
    if (error.status !== 401 && error.status !== 0) showComposerError(error.message);
  }
}

export function renderThreads() {
  const focusedId = document.activeElement && document.activeElement.closest(".thread-list li")
    ? document.activeElement.dataset.threadId : null;
  const focusedDelete = document.activeElement && document.activeElement.classList.contains("thread-delete");
  const items = state.threads.map((thread) => {
    const current = thread.thread_id === state.threadId;
    const title = thread.title || "Untitled chat";
    const open = h("button", {
      type: "button",
      class: "thread-item",
      "data-testid": "thread-item",
      "data-thread-id": thread.thread_id,
      "aria-current": current ? "page" : null,
    },
    h("span", { class: "thread-title", "data-testid": "thread-title" }, title),
    threadIsAsking(thread.thread_id)
      ? h("span", { class: "thread-asking", "data-testid": "thread-asking" }, "Needs your approval") : null,
    h("span", { class: "thread-when" }, formatWhen(thread.updated_at)));
    open.addEventListener("click", () => selectThread(thread.thread_id));
    const remove = h("button", {
      type: "button",
      class: "thread-delete",
      "data-testid": "thread-delete",
      "data-thread-id": thread.thread_id,
      "aria-label": `Delete chat: ${title}`,
      title: "Delete chat",
    }, h("span", { "aria-hidden": "true" }, "×"));
    remove.addEventListener("click", () => deleteThread(thread.thread_id, title));
    return h("li", { class: current ? "is-current" : null }, open, remove);
  });
  ui.threadList.replaceChildren(...items);
  ui.threadsEmpty.hidden = items.length > 0;
  if (focusedId) {
    const selector = focusedDelete ? ".thread-delete" : ".thread-item";
    const again = Array.from(ui.threadList.querySelectorAll(selector)).find((b) => b.dataset.threadId === focusedId);
    if (again) again.focus();
  }
}

export function selectThread(threadId, { push = true } = {}) {
  if (threadId !== state.threadId) {
    state.threadId = threadId;
    if (push) writeHash(threadId);
    hideComposerError();
    renderThreads();
    ui.conversation.replaceChildren();
    renderConversation(null);
    loadHistory({ quiet: true });
    loadPendingApprovals();
  }
  if (NARROW.matches) {
    closeSidebar(false);
    ui.input.focus();
  }
}

export function newChat() {
  selectThread(null);
  ui.input.focus();
}

async function deleteThread(threadId, title) {
  if (!window.confirm(`Delete the chat “${title}”? This cannot be undone.`)) return;
  try {
    await api(`/api/threads/${encodeURIComponent(threadId)}`, { method: "DELETE" });
  } catch (error) {
    if (error.status !== 404) {
      showComposerError(error.message);
      return;
    }
  }
  state.threads = state.threads.filter((t) => t.thread_id !== threadId);
  if (state.threadId === threadId) selectThread(null);
  renderThreads();
  scheduleThreadsReload(0);
}
