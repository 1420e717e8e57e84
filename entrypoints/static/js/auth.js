// Views and signing in: the login form, entering the chat, logging out.
import { api, ApiError } from "./api.js";
import { loadPendingApprovals } from "./approvals.js";
import { hideComposerError, showComposerError } from "./composer.js";
import { loadHistory, renderConversation } from "./conversation.js";
import { storageSet } from "./dom.js";
import { closeSidebar } from "./sidebar.js";
import { connect, disconnect, hideBanner } from "./socket.js";
import { CURSOR_KEY, EXPIRES_KEY, NARROW, TOKEN_KEY, state, ui } from "./state.js";
import { loadThreads, renderThreads, threadFromHash } from "./threads.js";
import { forgetTools } from "./tools.js";

export function showView(name) {
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

export function showAuthNote(message) {
  ui.authNote.textContent = message || "";
  ui.authNote.hidden = !message;
}

function setAuthBusy(busy) {
  ui.loginButton.disabled = busy;
  ui.registerButton.disabled = busy;
  ui.authForm.setAttribute("aria-busy", busy ? "true" : "false");
}

export function setToken(token, expiresIn) {
  state.token = token;
  storageSet(TOKEN_KEY, token);
  storageSet(EXPIRES_KEY, token && Number.isFinite(expiresIn) ? String(Date.now() + expiresIn * 1000) : null);
}

export async function onAuthSubmit(event) {
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

export async function enterChat() {
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
  await Promise.allSettled([loadThreads(), loadHistory({ quiet: true }), loadPendingApprovals()]);
  if (!state.token) return;
  connect();
  if (!NARROW.matches) ui.input.focus();
}

export function logout(note) {
  disconnect();
  setToken(null);
  state.lastCursor = null;
  storageSet(CURSOR_KEY, null);
  state.me = null;
  state.threads = [];
  state.threadId = null;
  state.runs.clear();
  state.pending.clear();
  state.asking.clear();
  Object.assign(state.history, { threadId: null, pages: [], before: null });
  state.historyRequest += 1;
  forgetTools();
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
