// goldenpath web chat: a plain ES module, no dependencies, no build step.
// Every piece of user or model text reaches the page through textContent, never innerHTML.

const TOKEN_KEY = "goldenpath.token";
const CURSOR_KEY = "goldenpath.cursor";
const EXPIRES_KEY = "goldenpath.tokenExpiresAt";
const NARROW = window.matchMedia("(max-width: 760px)");
const TERMINAL = new Set(["agent_completed", "agent_error", "agent_cancelled"]);
const HEARTBEAT_MS = 25000;
const PONG_TIMEOUT_MS = 10000;

// ---------------------------------------------------------------------------------------------
// Small helpers

const $ = (id) => document.getElementById(id);

/** Build an element: h("div", {class: "x", "data-testid": "y"}, "text", child, ...). */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function randomId(prefix) {
  if (window.crypto && typeof window.crypto.randomUUID === "function") {
    return `${prefix}_${window.crypto.randomUUID().replaceAll("-", "")}`;
  }
  const bytes = new Uint8Array(16);
  window.crypto.getRandomValues(bytes);
  return `${prefix}_${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

function storageGet(key) {
  try { return window.sessionStorage.getItem(key); } catch { return null; }
}
function storageSet(key, value) {
  try {
    if (value === null || value === undefined) window.sessionStorage.removeItem(key);
    else window.sessionStorage.setItem(key, value);
  } catch { /* private mode or full storage: the page still works, a reload just forgets */ }
}

/** Arguments, results and errors as readable text: strings as they are, the rest as JSON. */
function formatValue(value) {
  if (value === undefined) return "";
  if (typeof value === "string") {
    const trimmed = value.trim();
    if ((trimmed.startsWith("{") && trimmed.endsWith("}")) || (trimmed.startsWith("[") && trimmed.endsWith("]"))) {
      try { return JSON.stringify(JSON.parse(trimmed), null, 2); } catch { /* not JSON after all */ }
    }
    return value;
  }
  try { return JSON.stringify(value, null, 2); } catch { return String(value); }
}

function formatDuration(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

const relativeTime = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
function formatWhen(iso) {
  const when = Date.parse(iso);
  if (!Number.isFinite(when)) return "";
  const seconds = (when - Date.now()) / 1000;
  const abs = Math.abs(seconds);
  if (abs < 45) return "just now";
  if (abs < 3600) return relativeTime.format(Math.round(seconds / 60), "minute");
  if (abs < 86400) return relativeTime.format(Math.round(seconds / 3600), "hour");
  if (abs < 7 * 86400) return relativeTime.format(Math.round(seconds / 86400), "day");
  return new Date(when).toLocaleDateString(undefined, { month: "short", day: "numeric", year: "numeric" });
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

// ---------------------------------------------------------------------------------------------
// Elements and state

const ui = {
  authView: $("auth-view"),
  authForm: $("auth-form"),
  username: $("auth-username"),
  password: $("auth-password"),
  authError: $("auth-error"),
  authNote: $("auth-note"),
  loginButton: $("login-button"),
  registerButton: $("register-button"),
  chatView: $("chat-view"),
  account: $("account"),
  accountName: $("account-name"),
  logoutButton: $("logout-button"),
  sidebarToggle: $("sidebar-toggle"),
  sidebar: $("sidebar"),
  scrim: $("scrim"),
  chatMain: $("chat-main"),
  newChat: $("new-chat-button"),
  threadList: $("thread-list"),
  threadsEmpty: $("threads-empty"),
  banner: $("reconnecting-banner"),
  bannerText: $("reconnecting-text"),
  reconnectNow: $("reconnect-now"),
  conversation: $("conversation"),
  emptyState: $("empty-state"),
  suggestions: $("suggestions"),
  composer: $("composer"),
  input: $("message-input"),
  sendButton: $("send-button"),
  stopButton: $("stop-button"),
  errorArea: $("error-area"),
  errorText: $("error-text"),
  errorDismiss: $("error-dismiss"),
};

const state = {
  token: null,
  me: null,
  threads: [],
  threadId: null,
  runs: new Map(), // run_id -> RunView
  pending: new Map(), // client_message_id -> RunView whose ack has not arrived
  lastCursor: storageGet(CURSOR_KEY),
  historyRequest: 0,
  order: 0,
};

// ---------------------------------------------------------------------------------------------
// HTTP

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function fallbackMessage(status) {
  if (status === 401) return "Your session has ended. Please log in again.";
  if (status === 404) return "That was not found. It may have been deleted.";
  if (status === 413) return "That message is too long. Shorten it and try again.";
  if (status === 429) return "Too many requests. Wait a moment and try again.";
  if (status === 503) return "The server is starting up or busy. Try again in a moment.";
  if (status >= 500) return "Something went wrong on the server. Try again in a moment.";
  return `The request failed (HTTP ${status}).`;
}

async function api(path, { method = "GET", body, auth = true } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const token = state.token;
  if (auth && token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError(0, "network", "Could not reach the server. Check your connection and try again.");
  }
  let data = null;
  const text = response.status === 204 ? "" : await response.text().catch(() => "");
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok) {
    const error = (data && typeof data === "object" && data.error) || {};
    const failure = new ApiError(response.status, error.code || `http_${response.status}`,
      typeof error.message === "string" && error.message ? error.message : fallbackMessage(response.status));
    if (response.status === 401 && auth && token && token === state.token) {
      logout("Your session has expired. Please log in again.");
    }
    throw failure;
  }
  return data;
}

// ---------------------------------------------------------------------------------------------
// Views: signing in and chatting

function showView(name) {
  const chatting = name === "chat";
  ui.authView.hidden = name !== "auth";
  ui.chatView.hidden = !chatting;
  ui.account.hidden = !chatting;
  ui.sidebarToggle.hidden = !chatting;
  document.body.classList.toggle("is-chatting", chatting);
  if (!chatting) closeSidebar(false);
}

function showAuthError(message) {
  ui.authError.textContent = message;
  ui.authError.hidden = !message;
  if (message) ui.authNote.hidden = true;
}

function showAuthNote(message) {
  ui.authNote.textContent = message || "";
  ui.authNote.hidden = !message;
}

function setAuthBusy(busy) {
  ui.loginButton.disabled = busy;
  ui.registerButton.disabled = busy;
  ui.authForm.setAttribute("aria-busy", busy ? "true" : "false");
}

function setToken(token, expiresIn) {
  state.token = token;
  storageSet(TOKEN_KEY, token);
  storageSet(EXPIRES_KEY, token && Number.isFinite(expiresIn) ? String(Date.now() + expiresIn * 1000) : null);
}

async function onAuthSubmit(event) {
  event.preventDefault();
  const action = event.submitter && event.submitter.value === "register" ? "register" : "login";
  const username = ui.username.value.trim();
  const password = ui.password.value;
  if (!username) {
    showAuthError("Enter your username.");
    ui.username.focus();
    return;
  }
  if (!password) {
    showAuthError("Enter your password.");
    ui.password.focus();
    return;
  }
  showAuthError("");
  showAuthNote(action === "register" ? "Creating your account…" : "Logging in…");
  setAuthBusy(true);
  try {
    if (action === "register") {
      await api("/api/auth/register", { method: "POST", body: { username, password }, auth: false });
    }
    const login = await api("/api/auth/login", { method: "POST", body: { username, password }, auth: false });
    if (!login || typeof login.access_token !== "string") {
      throw new ApiError(500, "bad_response", "The server answered in a way this page does not understand.");
    }
    setToken(login.access_token, login.expires_in);
    ui.password.value = "";
    showAuthNote("");
    await enterChat();
  } catch (error) {
    showAuthNote("");
    showAuthError(error.message || "That did not work. Try again.");
    const aboutPassword = error.status === 401 || /password/i.test(error.message || "");
    (aboutPassword ? ui.password : ui.username).focus();
  } finally {
    setAuthBusy(false);
  }
}

async function enterChat() {
  let me;
  try {
    me = await api("/api/me");
  } catch (error) {
    if (error.status === 401) return; // api() already went back to the login form
    // The server may be restarting: show the chat anyway; the socket keeps trying.
    me = null;
    showComposerError(error.message);
  }
  if (!state.token) return;
  state.me = me;
  ui.accountName.textContent = me ? me.username : "";
  showView("chat");
  state.threadId = threadFromHash();
  renderThreads();
  renderConversation(null);
  await Promise.allSettled([loadThreads(), loadHistory({ quiet: true })]);
  if (!state.token) return;
  connect();
  if (!NARROW.matches) ui.input.focus();
}

function logout(note) {
  disconnect();
  setToken(null);
  state.lastCursor = null;
  storageSet(CURSOR_KEY, null);
  state.me = null;
  state.threads = [];
  state.threadId = null;
  state.runs.clear();
  state.pending.clear();
  state.historyRequest += 1;
  ui.threadList.replaceChildren();
  ui.conversation.replaceChildren();
  ui.accountName.textContent = "";
  ui.input.value = "";
  hideComposerError();
  hideBanner();
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  showView("auth");
  showAuthError("");
  showAuthNote(note || "");
  ui.username.focus();
}

// ---------------------------------------------------------------------------------------------
// Threads (sidebar) and the location hash

function threadFromHash() {
  const match = /^#thread=([^&]+)$/.exec(location.hash);
  if (!match) return null;
  try { return decodeURIComponent(match[1]); } catch { return null; }
}

function writeHash(threadId, { replace = false } = {}) {
  const target = threadId ? `#thread=${encodeURIComponent(threadId)}` : "";
  if (location.hash === target || (!target && !location.hash)) return;
  const url = target || location.pathname + location.search;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
}

let threadsTimer = null;
function scheduleThreadsReload(delay = 250) {
  clearTimeout(threadsTimer);
  threadsTimer = setTimeout(() => { loadThreads().catch(() => {}); }, delay);
}

async function loadThreads() {
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

function renderThreads() {
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

function selectThread(threadId, { push = true } = {}) {
  if (threadId !== state.threadId) {
    state.threadId = threadId;
    if (push) writeHash(threadId);
    hideComposerError();
    renderThreads();
    ui.conversation.replaceChildren();
    renderConversation(null);
    loadHistory({ quiet: true });
  }
  if (NARROW.matches) {
    closeSidebar(false);
    ui.input.focus();
  }
}

function newChat() {
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

// ---------------------------------------------------------------------------------------------
// One run's live timeline

class RunView {
  constructor({ runId = null, threadId = null, clientMessageId = null, text = null } = {}) {
    this.runId = runId;
    this.threadId = threadId;
    this.clientMessageId = clientMessageId;
    this.text = text;
    this.order = ++state.order;
    this.lastSeq = 0;
    this.done = false;
    this.fromHistory = false;
    this.sent = false;
    this.awaitingThread = false;
    this.cancelRequested = false;
    this.replayRequested = false;
    this.statusCheckedAt = 0;
    this.tools = new Map();
    this.answerText = "";
    this.userEl = null;

    this.waitingText = h("span", {}, "Sending…");
    this.waitingEl = h("p", { class: "run-waiting", "data-testid": "run-waiting" },
      h("span", { class: "spinner", "aria-hidden": "true" }), this.waitingText);
    this.stepsEl = h("div", { class: "run-steps" });
    this.answerEl = h("div", { class: "answer", "data-testid": "answer", hidden: true });
    this.statusEl = h("p", { class: "run-status", "data-testid": "run-status", hidden: true });
    this.metaEl = h("div", { class: "run-meta", hidden: true });
    this.el = h("article", {
      class: "run is-running",
      "data-testid": "run-timeline",
      "data-run-id": runId || "",
      "data-status": "pending",
      "aria-label": "Reply",
      "aria-busy": "true",
    }, this.stepsEl, this.waitingEl, this.answerEl, this.statusEl, this.metaEl);
  }

  setRunId(runId) {
    this.runId = runId;
    this.el.dataset.runId = runId;
  }

  setWaiting(text) {
    this.waitingText.textContent = text;
  }

  setStatus(status) {
    this.el.dataset.status = status;
  }

  /** Forget what was drawn (a full replay of a run known only from history is coming). */
  reset() {
    this.done = false;
    this.fromHistory = false;
    this.tools.clear();
    this.answerText = "";
    this.stepsEl.replaceChildren();
    this.answerEl.replaceChildren();
    this.answerEl.hidden = true;
    this.statusEl.hidden = true;
    this.metaEl.replaceChildren();
    this.metaEl.hidden = true;
    this.el.classList.add("is-running");
    this.el.setAttribute("aria-busy", "true");
    this.setStatus("running");
    this.refreshWaiting();
  }

  refreshWaiting() {
    const hasContent = this.stepsEl.childElementCount > 0 || !this.answerEl.hidden;
    this.waitingEl.hidden = this.done || hasContent;
  }

  apply(event) {
    const data = event.data && typeof event.data === "object" ? event.data : {};
    switch (event.type) {
      case "agent_started":
        this.setStatus("running");
        this.setWaiting("Thinking…");
        break;
      case "agent_thinking":
        this.setStatus("running");
        this.thinking(typeof data.text === "string" ? data.text : "");
        break;
      case "tool_executing":
        this.setStatus("running");
        this.toolExecuting(data);
        break;
      case "tool_completed":
        this.toolCompleted(data);
        break;
      case "agent_message_delta":
        this.setStatus("running");
        this.delta(typeof data.delta === "string" ? data.delta : "");
        break;
      case "agent_completed":
        this.completed(data);
        break;
      case "agent_error":
        this.failed(data);
        break;
      case "agent_cancelled":
        this.cancelled(data);
        break;
      default:
        break; // a newer server's event: nothing to draw
    }
    this.refreshWaiting();
  }

  thinking(text) {
    if (!text) return;
    const last = this.stepsEl.lastElementChild;
    // A model that streams its reasoning sends fragments; glue a fragment onto the line before.
    if (last && last.classList.contains("thinking") && /^[\s,.;:!?)\]…a-z]/.test(text)) {
      const span = last.querySelector(".thinking-text");
      span.textContent += text;
      return;
    }
    this.stepsEl.append(h("p", { class: "step thinking", "data-testid": "thinking" },
      h("span", { class: "spinner spinner-small", "aria-hidden": "true" }),
      h("span", { class: "thinking-text" }, text.trim())));
  }

  toolExecuting(data) {
    const id = data.tool_call_id || `tool_${this.tools.size + 1}`;
    const name = typeof data.tool === "string" && data.tool ? data.tool : "tool";
    const stateEl = h("span", { class: "tool-state", "data-testid": "tool-state" },
      h("span", { class: "spinner spinner-small", "aria-hidden": "true" }), "running");
    const duration = h("span", { class: "tool-duration", "data-testid": "tool-duration", hidden: true });
    const card = h("div", {
      class: "step tool-card is-running",
      "data-testid": "tool-card",
      "data-tool-call-id": id,
      "data-tool": name,
      "data-status": "running",
      role: "group",
      "aria-label": `Tool ${name}`,
    },
    h("div", { class: "tool-head" },
      h("span", { class: "tool-icon", "aria-hidden": "true" }),
      h("span", { class: "tool-kicker" }, "Tool"),
      h("code", { class: "tool-name", "data-testid": "tool-name" }, name),
      h("span", { class: "tool-spacer" }),
      duration,
      stateEl));
    if (data.arguments !== undefined) {
      card.append(h("div", { class: "tool-section" },
        h("span", { class: "tool-label" }, "Arguments"),
        h("pre", { class: "tool-json", "data-testid": "tool-arguments" }, formatValue(data.arguments))));
    }
    const entry = { card, state: stateEl, duration };
    this.tools.set(id, entry);
    this.stepsEl.append(card);
    return entry;
  }

  toolCompleted(data) {
    const id = data.tool_call_id || `tool_${this.tools.size}`;
    const entry = this.tools.get(id) || this.toolExecuting({ tool_call_id: id, tool: data.tool });
    const failed = data.error !== undefined && data.error !== null;
    entry.card.classList.remove("is-running");
    entry.card.classList.toggle("is-error", failed);
    entry.card.dataset.status = failed ? "error" : "ok";
    entry.state.replaceChildren(failed ? "failed" : "done");
    const took = formatDuration(data.duration_ms);
    if (took) {
      entry.duration.textContent = took;
      entry.duration.hidden = false;
    }
    let shown = failed ? data.error : data.result;
    if (failed && shown && typeof shown === "object" && typeof shown.message === "string") shown = shown.message;
    entry.card.append(h("div", { class: "tool-section" },
      h("span", { class: "tool-label" }, failed ? "Error" : "Result"),
      h("pre", {
        class: failed ? "tool-json tool-error" : "tool-json",
        "data-testid": failed ? "tool-error" : "tool-result",
      }, formatValue(shown))));
  }

  delta(text) {
    if (!text) return;
    this.answerText += text;
    this.answerEl.hidden = false;
    this.answerEl.classList.add("is-streaming");
    this.answerEl.textContent = this.answerText;
  }

  completed(data) {
    if (typeof data.text === "string") this.answerText = data.text;
    this.answerEl.textContent = this.answerText;
    this.answerEl.hidden = !this.answerText;
    this.answerEl.classList.remove("is-streaming");
    const usage = data.usage && typeof data.usage === "object" ? data.usage : null;
    if (usage) {
      const parts = [];
      if (usage.tool_calls) parts.push(plural(usage.tool_calls, "tool call"));
      if (usage.model_calls) parts.push(plural(usage.model_calls, "model call"));
      const tokens = (usage.prompt_tokens || 0) + (usage.completion_tokens || 0);
      if (tokens) parts.push(plural(tokens, "token"));
      if (usage.duration_ms) parts.push(formatDuration(usage.duration_ms));
      if (parts.length) {
        this.metaEl.replaceChildren(h("span", { "data-testid": "run-usage" }, parts.join(" · ")));
        this.metaEl.hidden = false;
      }
    }
    this.addCopyButton();
    this.finish("completed");
  }

  addCopyButton() {
    if (!this.answerText || !navigator.clipboard || !window.isSecureContext) return;
    const button = h("button", { type: "button", class: "button button-link copy-answer", "data-testid": "copy-answer" }, "Copy");
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(this.answerText);
        button.textContent = "Copied";
      } catch {
        button.textContent = "Could not copy";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 1800);
    });
    this.metaEl.append(button);
    this.metaEl.hidden = false;
  }

  failed(data) {
    const message = typeof data.message === "string" && data.message
      ? data.message : "Something went wrong while answering. Try again.";
    this.statusEl.replaceChildren(h("span", { class: "run-status-icon", "aria-hidden": "true" }, "!"),
      h("span", {}, message));
    this.statusEl.className = "run-status run-error";
    this.statusEl.hidden = false;
    this.answerEl.classList.remove("is-streaming");
    this.finish("error");
  }

  cancelled(data) {
    const reason = typeof data.reason === "string" ? data.reason : "user";
    const reasons = {
      interrupted: "a newer message took over",
      timeout: "it took too long",
      shutdown: "the server was restarting",
    };
    const text = !reason || reason === "user" ? "Stopped" : `Stopped: ${reasons[reason] || reason}`;
    this.statusEl.replaceChildren(h("span", {}, text));
    this.statusEl.className = "run-status run-stopped";
    this.statusEl.hidden = false;
    this.answerEl.classList.remove("is-streaming");
    this.finish("cancelled");
  }

  /** A run known only from the thread's history: its final answer. */
  showFinalText(text) {
    this.answerText = text || "";
    this.answerEl.textContent = this.answerText;
    this.answerEl.hidden = !this.answerText;
    this.answerEl.classList.remove("is-streaming");
    this.addCopyButton();
    this.finish("completed");
  }

  finish(status) {
    this.done = true;
    this.setStatus(status);
    for (const entry of this.tools.values()) {
      if (entry.card.classList.contains("is-running")) {
        entry.card.classList.remove("is-running");
        entry.card.dataset.status = "unfinished";
        entry.state.replaceChildren("not finished");
      }
    }
    this.el.classList.remove("is-running");
    this.el.setAttribute("aria-busy", "false");
    this.refreshWaiting();
    if (this.clientMessageId) state.pending.delete(this.clientMessageId);
    updateComposer();
  }

  requestCancel() {
    if (this.done) return;
    this.cancelRequested = true;
    this.setWaiting("Stopping…");
    if (this.runId) {
      if (!send({ type: "cancel", run_id: this.runId })) {
        api(`/api/runs/${encodeURIComponent(this.runId)}/cancel`, { method: "POST" })
          .catch((error) => showComposerError(error.message));
      }
    } else if (this.sent) {
      send({ type: "cancel", client_message_id: this.clientMessageId });
    } else {
      // Never reached the server: nothing to stop there.
      this.cancelled({ reason: "user" });
    }
  }

  /** Ask the server what became of a run the page has no ending for. */
  async checkStatus() {
    if (!this.runId || this.done || Date.now() - this.statusCheckedAt < 3000) return;
    this.statusCheckedAt = Date.now();
    let run;
    try {
      run = await api(`/api/runs/${encodeURIComponent(this.runId)}`);
    } catch {
      return;
    }
    if (this.done || !run) return;
    if (run.status === "failed") this.failed({ message: run.error });
    else if (run.status === "cancelled") this.cancelled({ reason: run.error || "user" });
    else if (run.status === "completed") scheduleHistoryReload(100);
    else {
      this.setStatus(run.status);
      if (this.lastSeq === 0) this.setWaiting(run.status === "queued" ? "Queued…" : "Working…");
      this.requestReplay();
    }
  }

  /** Ask for every event of this run (tool calls included) over the socket. */
  requestReplay() {
    if (this.replayRequested || this.done || !this.runId || !conn.ready) return;
    this.replayRequested = true;
    send({ type: "resume", run_id: this.runId, after_seq: this.lastSeq });
  }
}

function userBubble(text, messageId) {
  return h("div", {
    class: "msg msg-user",
    "data-testid": "user-message",
    "data-message-id": messageId || null,
  }, h("span", { class: "visually-hidden" }, "You said: "), h("div", { class: "msg-text" }, text));
}

// ---------------------------------------------------------------------------------------------
// The conversation: history merged with live runs, without redrawing what is already there

function isNearBottom() {
  const c = ui.conversation;
  return c.scrollHeight - c.scrollTop - c.clientHeight < 120;
}

function scrollToBottom() {
  ui.conversation.scrollTop = ui.conversation.scrollHeight;
}

/** Run fn (which changes the conversation) and keep the view pinned to the bottom if it was. */
function keepingScroll(fn) {
  const pinned = isNearBottom();
  fn();
  if (pinned) scrollToBottom();
}

function liveRunsForCurrentThread() {
  const all = [...state.runs.values(), ...state.pending.values()];
  return all.filter((rv) => rv.userEl && (rv.threadId === state.threadId ||
    (rv.awaitingThread && state.threadId === null)));
}

/**
 * Draw the current thread. messages: the thread's history from the server, or null to draw only
 * what this page already knows (live runs). Nodes already on the page are kept in place.
 */
function renderConversation(messages) {
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
  for (const rv of toCheck) rv.checkStatus();
  updateComposer();
}

let historyTimer = null;
function scheduleHistoryReload(delay = 300) {
  clearTimeout(historyTimer);
  historyTimer = setTimeout(() => { loadHistory(); }, delay);
}

async function loadHistory({ quiet = false } = {}) {
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
      writeHash(null, { replace: true });
      renderThreads();
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

// ---------------------------------------------------------------------------------------------
// Composing and sending

function showComposerError(message) {
  ui.errorText.textContent = message;
  ui.errorArea.hidden = !message;
}

function hideComposerError() {
  showComposerError("");
}

function autosize() {
  const input = ui.input;
  input.rows = 1;
  const style = window.getComputedStyle(input);
  const line = parseFloat(style.lineHeight) || 22;
  const padding = (parseFloat(style.paddingTop) || 0) + (parseFloat(style.paddingBottom) || 0);
  const rows = Math.max(1, Math.min(8, Math.round((input.scrollHeight - padding) / line)));
  input.rows = rows;
}

function activeRunsInView() {
  return liveRunsForCurrentThread().filter((rv) => !rv.done && rv.el.isConnected);
}

function updateComposer() {
  const active = activeRunsInView();
  const stopping = active.length > 0 && active.every((rv) => rv.cancelRequested);
  ui.stopButton.hidden = active.length === 0;
  ui.stopButton.disabled = stopping;
  ui.stopButton.textContent = stopping ? "Stopping…" : "Stop";
  ui.composer.classList.toggle("is-running", active.length > 0);
}

function chatFrame(rv) {
  const frame = { type: "chat", message: rv.text, client_message_id: rv.clientMessageId };
  if (rv.threadId) frame.thread_id = rv.threadId;
  return frame;
}

function sendChat(rv) {
  if (rv.done || rv.cancelRequested) return;
  if (rv.awaitingThread) {
    rv.setWaiting("Waiting for the chat to be created…");
    return;
  }
  rv.sent = send(chatFrame(rv)) || rv.sent;
  rv.setWaiting(conn.ready ? "Sending…" : "Waiting for the connection…");
}

function submitMessage(text) {
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

function stopRuns() {
  for (const rv of activeRunsInView()) rv.requestCancel();
  updateComposer();
  ui.input.focus();
}

// ---------------------------------------------------------------------------------------------
// The WebSocket: authenticate, receive, reconnect with backoff, resume

const conn = {
  ws: null,
  ready: false,
  attempt: 0,
  retryTimer: null,
  heartbeatTimer: null,
  pongTimer: null,
  everReady: false,
};

function send(frame) {
  if (!conn.ws || !conn.ready || conn.ws.readyState !== WebSocket.OPEN) return false;
  try {
    conn.ws.send(JSON.stringify(frame));
    return true;
  } catch {
    return false;
  }
}

function connect() {
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
      logout("Your session has expired. Please log in again.");
      return;
    }
    lostConnection(event.code);
  });
}

function disconnect() {
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

function retryNow() {
  if (!state.token || conn.ws) return;
  conn.attempt = Math.max(0, conn.attempt - 1);
  connect();
}

function showBanner(text) {
  ui.bannerText.textContent = text || "Reconnecting…";
  ui.banner.hidden = false;
}

function hideBanner() {
  ui.banner.hidden = true;
}

function startHeartbeat() {
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

function onFrame(frame) {
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
  // Whole runs first (so their early events are not mistaken for duplicates), then everything
  // after the last cursor this tab saw. A server without resume answers unknown_type: ignored.
  for (const rv of state.runs.values()) {
    if (!rv.done && rv.runId && rv.lastSeq === 0 && rv.userEl && rv.userEl.isConnected) {
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

// ---------------------------------------------------------------------------------------------
// The sidebar on narrow screens

function openSidebar() {
  document.body.classList.add("sidebar-open");
  ui.sidebarToggle.setAttribute("aria-expanded", "true");
  ui.scrim.hidden = false;
  ui.sidebar.inert = false;
  ui.chatMain.inert = true;
  const current = ui.threadList.querySelector('[aria-current="page"]');
  (current || ui.newChat).focus();
}

function closeSidebar(returnFocus = true) {
  const wasOpen = document.body.classList.contains("sidebar-open");
  document.body.classList.remove("sidebar-open");
  ui.sidebarToggle.setAttribute("aria-expanded", "false");
  ui.scrim.hidden = true;
  ui.chatMain.inert = false;
  ui.sidebar.inert = NARROW.matches;
  if (wasOpen && returnFocus) ui.sidebarToggle.focus();
}

function syncSidebarMode() {
  if (!NARROW.matches) closeSidebar(false);
  else ui.sidebar.inert = !document.body.classList.contains("sidebar-open");
}

// ---------------------------------------------------------------------------------------------
// Wiring

ui.authForm.addEventListener("submit", onAuthSubmit);
ui.logoutButton.addEventListener("click", () => logout("You have logged out."));
ui.newChat.addEventListener("click", newChat);
ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  submitMessage();
});
ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
    event.preventDefault();
    submitMessage();
  }
});
ui.input.addEventListener("input", autosize);
ui.stopButton.addEventListener("click", stopRuns);
ui.errorDismiss.addEventListener("click", () => {
  hideComposerError();
  ui.input.focus();
});
ui.reconnectNow.addEventListener("click", retryNow);
// The hash names the open chat: following the skip link must move focus, not leave the chat.
document.querySelector(".skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  if (document.body.classList.contains("sidebar-open")) closeSidebar(false);
  ui.input.focus();
});
ui.suggestions.addEventListener("click", (event) => {
  const button = event.target.closest("button.suggestion");
  if (button) submitMessage(button.textContent);
});
ui.sidebarToggle.addEventListener("click", () => {
  if (document.body.classList.contains("sidebar-open")) closeSidebar();
  else openSidebar();
});
ui.scrim.addEventListener("click", () => closeSidebar());
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && document.body.classList.contains("sidebar-open")) {
    closeSidebar();
  }
});
NARROW.addEventListener("change", syncSidebarMode);

window.addEventListener("hashchange", () => {
  if (!state.token) return;
  const threadId = threadFromHash();
  if (threadId !== state.threadId) selectThread(threadId, { push: false });
});
window.addEventListener("online", retryNow);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") retryNow();
});
// Keep "5 minutes ago" honest.
setInterval(() => { if (state.token && state.threads.length) renderThreads(); }, 60000);

// ---------------------------------------------------------------------------------------------
// Start

function start() {
  syncSidebarMode();
  const token = storageGet(TOKEN_KEY);
  const expiresAt = Number(storageGet(EXPIRES_KEY));
  if (token && (!expiresAt || expiresAt > Date.now())) {
    state.token = token;
    enterChat();
  } else {
    if (token) {
      setToken(null);
      storageSet(CURSOR_KEY, null);
      state.lastCursor = null;
    }
    showView("auth");
    if (token) showAuthNote("Your session has expired. Please log in again.");
    ui.username.focus();
  }
}

start();
