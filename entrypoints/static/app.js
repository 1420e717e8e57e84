// goldenpath web chat's entry module: wires the modules in js/ to the page and to each other, and starts.
// Plain ES modules, no dependencies, no build step. Lowest first: dom, state, api, sidebar, composer,
// socket, approval_card, approvals, markdown, run_render, run_view, conversation, threads, sending, editing,
// connection,
// tools_form, tools, auth; each imports only from below it, and the few calls upward go through the
// hooks set here.
// Every piece of user or model text reaches the page through textContent, never innerHTML.

import { whenUnauthorized } from "./js/api.js";
import { whenAskingChanged } from "./js/approvals.js";
import { enterChat, logout, onAuthSubmit, setToken, showAuthNote, showView } from "./js/auth.js";
import { autosize, hideComposerError } from "./js/composer.js";
import { onFrame } from "./js/connection.js";
import { scheduleHistoryReload, whenEditAsked, whenThreadGone } from "./js/conversation.js";
import { storageGet, storageSet } from "./js/dom.js";
import { editMessage } from "./js/editing.js";
import { whenRunEndedUnseen } from "./js/run_view.js";
import { stopRuns, submitMessage } from "./js/sending.js";
import { closeSidebar, openSidebar, syncSidebarMode } from "./js/sidebar.js";
import { retryNow, setSocketHandlers } from "./js/socket.js";
import { CURSOR_KEY, EXPIRES_KEY, NARROW, TOKEN_KEY, state, ui } from "./js/state.js";
import { newChat, renderThreads, selectThread, threadFromHash, writeHash } from "./js/threads.js";
import { openTools } from "./js/tools.js";

// ---------------------------------------------------------------------------------------------
// Hooks: calls from a lower module up to a higher one

const SESSION_EXPIRED = "Your session has expired. Please log in again.";
whenUnauthorized(() => logout(SESSION_EXPIRED));
setSocketHandlers({ onFrame, onSessionExpired: () => logout(SESSION_EXPIRED) });
whenRunEndedUnseen(() => scheduleHistoryReload(100));
whenAskingChanged(() => renderThreads());
whenEditAsked(editMessage);
whenThreadGone(() => {
  writeHash(null, { replace: true });
  renderThreads();
});

// ---------------------------------------------------------------------------------------------
// Wiring

ui.authForm.addEventListener("submit", onAuthSubmit);
ui.logoutButton.addEventListener("click", () => logout("You have logged out."));
ui.toolsButton.addEventListener("click", () => {
  if (document.body.classList.contains("sidebar-open")) closeSidebar(false);
  openTools();
});
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
    if (token) showAuthNote(SESSION_EXPIRED);
    ui.username.focus();
  }
}

start();
