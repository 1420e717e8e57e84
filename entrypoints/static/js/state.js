// The page's elements and state, the sessionStorage keys and the narrow-screen media query.
import { $, storageGet } from "./dom.js";

export const TOKEN_KEY = "goldenpath.token";
export const CURSOR_KEY = "goldenpath.cursor";
export const EXPIRES_KEY = "goldenpath.tokenExpiresAt";
export const NARROW = window.matchMedia("(max-width: 760px)");

export const ui = {
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
  toolsButton: $("tools-button"),
  sidebarToggle: $("sidebar-toggle"),
  sidebar: $("sidebar"),
  scrim: $("scrim"),
  chatMain: $("chat-main"),
  newChat: $("new-chat-button"),
  threadList: $("thread-list"),
  threadSearch: $("thread-search"),
  threadsMore: $("threads-more"),
  undoToast: $("undo-toast"),
  undoText: $("undo-text"),
  undoButton: $("undo-button"),
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

export const state = {
  token: null,
  me: null,
  threads: [],
  threadsNext: null, // next_cursor of the thread list (null: all shown)
  hiddenThreads: new Set(), // deleted, but still undoable: not shown

  threadId: null,
  runs: new Map(), // run_id -> RunView
  pending: new Map(), // client_message_id -> RunView whose ack has not arrived
  asking: new Map(), // "run_id tool_call_id" -> { runId, threadId, question, at }: open approvals
  lastCursor: storageGet(CURSOR_KEY),
  historyRequest: 0,
  // The open thread's timeline as loaded: pages of items (oldest page first), `before` for the page older
  // than all of them (null: the start of the thread is drawn).
  history: { threadId: null, pages: [], before: null, order: 0, loadingOlder: false },
  order: 0,
};

/** The runs drawn in the open chat, live or pending (a new chat's pending ones while it has no id). */
export function liveRunsForCurrentThread() {
  const all = [...state.runs.values(), ...state.pending.values()];
  return all.filter((rv) => rv.userEl && (rv.threadId === state.threadId ||
    (rv.awaitingThread && state.threadId === null)));
}
