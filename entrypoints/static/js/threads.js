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

/** The first page of the caller's threads (those matching the search box, if it holds words). */
export async function loadThreads() {
  if (!state.token) return;
  const q = ui.threadSearch.value.trim();
  try {
    const data = await api(`/api/threads?${new URLSearchParams(q ? { q } : {})}`);
    if (q !== ui.threadSearch.value.trim()) return; // typed on meanwhile: a later answer is coming
    state.threads = Array.isArray(data && data.threads) ? data.threads : [];
    state.threadsNext = (data && data.next_cursor) || null;
    renderThreads();
  } catch (error) {
    if (error.status !== 401 && error.status !== 0) showComposerError(error.message);
  }
}

/** The next page of the list (next_cursor). */
export async function loadMoreThreads() {
  if (!state.threadsNext) return;
  const q = ui.threadSearch.value.trim();
  const cursor = state.threadsNext;
  try {
    const data = await api(`/api/threads?${new URLSearchParams(q ? { q, cursor } : { cursor })}`);
    if (cursor !== state.threadsNext) return;
    const known = new Set(state.threads.map((t) => t.thread_id));
    state.threads.push(...(data.threads || []).filter((t) => !known.has(t.thread_id)));
    state.threadsNext = data.next_cursor || null;
    renderThreads();
  } catch (error) {
    if (error.status !== 401) showComposerError(error.message);
  }
}

let searchTimer = null;
ui.threadSearch.addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => { loadThreads(); }, 200);
});
ui.threadsMore.addEventListener("click", () => loadMoreThreads());

// The chat being renamed in place: the list is not redrawn under the person typing (a reload of
// the list, a live event) until they finish; the last state is drawn then.
let renaming = null;

export function renderThreads() {
  if (renaming) return;
  const active = document.activeElement;
  const focusedId = active && active.closest(".thread-list li") ? active.dataset.threadId : null;
  const focusedClass = focusedId ? active.classList[0] : null;
  const items = state.threads.filter((t) => !state.hiddenThreads.has(t.thread_id)).map((thread) => {
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
    const rename = h("button", {
      type: "button", class: "thread-rename", "data-testid": "thread-rename", "data-thread-id": thread.thread_id,
      "aria-label": `Rename chat: ${title}`, title: "Rename chat",
    }, h("span", { "aria-hidden": "true" }, "✎"));
    const remove = h("button", {
      type: "button",
      class: "thread-delete",
      "data-testid": "thread-delete",
      "data-thread-id": thread.thread_id,
      "aria-label": `Delete chat: ${title}`,
      title: "Delete chat",
    }, h("span", { "aria-hidden": "true" }, "×"));
    const li = h("li", { class: current ? "is-current" : null }, open, rename, remove);
    rename.addEventListener("click", () => startRename(li, thread));
    remove.addEventListener("click", () => deleteThread(thread.thread_id, title));
    return li;
  });
  ui.threadList.replaceChildren(...items);
  ui.threadsEmpty.textContent = ui.threadSearch.value.trim() ? "No chats match." : "No chats yet.";
  ui.threadsEmpty.hidden = items.length > 0;
  ui.threadsMore.hidden = !state.threadsNext;
  if (focusedId) {
    const again = Array.from(ui.threadList.querySelectorAll(`.${focusedClass}`))
      .find((b) => b.dataset.threadId === focusedId);
    if (again) again.focus();
  }
}

/** Rename in place: the title becomes a text box; Enter or leaving it saves, Escape keeps the old one. */
function startRename(li, thread) {
  const input = h("input", {
    type: "text", class: "thread-rename-input", "data-testid": "thread-rename-input", maxlength: "200",
    "aria-label": "New name for this chat", value: thread.title || "",
  });
  let done = false;
  renaming = thread.thread_id;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.replace(/\s+/g, " ").trim();
    if (save && title && title !== thread.title) {
      try {
        const renamed = await api(`/api/threads/${encodeURIComponent(thread.thread_id)}`,
          { method: "PATCH", body: { title } });
        thread.title = renamed.title;
      } catch (error) {
        showComposerError(`Could not rename the chat: ${error.message}`);
      }
    }
    renaming = null;
    renderThreads();
    const again = ui.threadList.querySelector(`.thread-rename[data-thread-id="${CSS.escape(thread.thread_id)}"]`);
    if (again) again.focus();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); finish(true); }
    if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
  li.replaceChildren(input);
  input.focus();
  input.select();
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

const UNDO_MS = 5000;
let undoing = null; // { threadId, timer }: the delete that waits out its undo time

/** Delete with undo: the chat is hidden at once and deleted when the undo time is over. */
async function deleteThread(threadId, title) {
  if (undoing) await commitDelete(); // one undo at a time: the earlier one is final now
  state.hiddenThreads.add(threadId);
  const wasOpen = state.threadId === threadId;
  if (wasOpen) selectThread(null);
  renderThreads();
  ui.undoText.textContent = `Deleted “${title}”.`;
  ui.undoButton.hidden = false;
  ui.undoButton.setAttribute("aria-label", `Undo deleting ${title}`);
  undoing = { threadId, wasOpen, timer: setTimeout(() => { commitDelete(); }, UNDO_MS) };
  if (!ui.sidebar.contains(document.activeElement) || document.activeElement === document.body) ui.undoButton.focus();
}

async function commitDelete() {
  const pending = undoing;
  if (!pending) return;
  undoing = null;
  clearTimeout(pending.timer);
  hideUndo();
  try {
    await api(`/api/threads/${encodeURIComponent(pending.threadId)}`, { method: "DELETE" });
  } catch (error) {
    if (error.status !== 404) {
      state.hiddenThreads.delete(pending.threadId);
      showComposerError(error.message);
      renderThreads();
      return;
    }
  }
  state.threads = state.threads.filter((t) => t.thread_id !== pending.threadId);
  state.hiddenThreads.delete(pending.threadId);
  renderThreads();
}

function hideUndo() {
  ui.undoText.textContent = "";
  ui.undoButton.hidden = true;
}

ui.undoButton.addEventListener("click", () => {
  const pending = undoing;
  if (!pending) return;
  undoing = null;
  clearTimeout(pending.timer);
  state.hiddenThreads.delete(pending.threadId);
  hideUndo();
  ui.undoText.textContent = "Restored.";
  if (pending.wasOpen) selectThread(pending.threadId);
  renderThreads();
  const item = ui.threadList.querySelector(`.thread-item[data-thread-id="${CSS.escape(pending.threadId)}"]`);
  if (item) item.focus();
});
