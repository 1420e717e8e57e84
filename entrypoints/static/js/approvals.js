// Approvals: a run's tool call that waits for its user's decision. Draws and settles the cards in a
// run's timeline, sends the decision (the approval frame; HTTP when there is no socket), and keeps
// the open questions of every thread (GET /api/approvals/pending, then live events), which mark
// threads in the sidebar and bring the cards back after a reload or on another tab.
import { api } from "./api.js";
import { ApprovalCard, outcomeOf } from "./approval_card.js";
import { randomId } from "./dom.js";
import { send } from "./socket.js";
import { state } from "./state.js";

// What a change of the open questions does (app.js: redraw the sidebar's marks).
let onAskingChanged = () => {};
export function whenAskingChanged(fn) {
  onAskingChanged = fn;
}

const settledKeys = new Set(); // questions decided or ended: a late snapshot must not open them again
const frames = new Map(); // client_message_id of an approval frame -> { rv, card }, for its error
let clock = 0; // orders the live changes against a snapshot of the pending list
let loading = 0;

const keyOf = (runId, toolCallId) => `${runId} ${toolCallId}`;

function mark(runId, threadId, question) {
  const key = keyOf(runId, question.tool_call_id);
  if (settledKeys.has(key)) return;
  const known = state.asking.get(key);
  state.asking.set(key, { runId, threadId: threadId || (known && known.threadId), question, at: ++clock });
  if (!known) onAskingChanged();
}

function unmark(key) {
  settledKeys.add(key);
  if (state.asking.delete(key)) onAskingChanged();
}

export function threadIsAsking(threadId) {
  for (const entry of state.asking.values()) {
    if (entry.threadId === threadId) return true;
  }
  return false;
}

/** approval_required, or an open question the server listed: the run's card, drawn once. */
export function askApproval(rv, question) {
  const id = question && question.tool_call_id;
  if (typeof id !== "string" || !id || rv.done) return;
  let card = rv.approvals.get(id);
  if (card && card.settled) return;
  if (!card) {
    card = new ApprovalCard(id, (approve, remember) => decide(rv, card, approve, remember));
    rv.approvals.set(id, card);
  }
  card.ask(question);
  // Drawn before the run's earlier steps came (from the pending list): it stays the last step.
  if (rv.stepsEl.lastElementChild !== card.el) rv.stepsEl.append(card.el);
  rv.setStatus("waiting");
  rv.el.setAttribute("aria-busy", "false");
  if (rv.runId) mark(rv.runId, rv.threadId, question);
}

function settle(rv, card, outcome) {
  card.settle(outcome);
  for (const [clientMessageId, sent] of frames) {
    if (sent.card === card) frames.delete(clientMessageId);
  }
  if (rv.runId) unmark(keyOf(rv.runId, card.id));
}

/** approval_decided: the card turns into its outcome (a standing grant's card appears only now). */
export function approvalDecided(rv, data) {
  const id = data.tool_call_id;
  if (typeof id !== "string" || !id) return;
  let card = rv.approvals.get(id);
  if (!card) {
    card = new ApprovalCard(id, null);
    rv.approvals.set(id, card);
    rv.stepsEl.append(card.el);
  }
  settle(rv, card, outcomeOf(data));
  if (!rv.done) {
    rv.setStatus("running");
    rv.el.setAttribute("aria-busy", "true");
  }
}

/** The run ended (stopped, failed, or interrupted by a newer message): an open question is moot. */
export function approvalsEnded(rv) {
  for (const card of rv.approvals.values()) {
    if (!card.settled) settle(rv, card, { kind: "ended", text: "Not decided: the reply ended" });
  }
  for (const [key, entry] of state.asking) {
    if (entry.runId === rv.runId) unmark(key);
  }
}

/** A denied call's tool_completed ("denied") adds nothing to its card's "Denied". */
export function shownAsDenied(rv, data) {
  const card = rv.approvals.get(data.tool_call_id);
  return data.error === "denied" && Boolean(card && card.settled);
}

function decide(rv, card, approve, remember) {
  const body = { tool_call_id: card.id, approve };
  if (remember) body.remember = "thread";
  const clientMessageId = randomId("ap");
  if (rv.runId && send({ type: "approval", run_id: rv.runId, client_message_id: clientMessageId, ...body })) {
    frames.set(clientMessageId, { rv, card });
    return;
  }
  api(`/api/runs/${encodeURIComponent(rv.runId)}/approvals`, { method: "POST", body })
    .then(() => { if (!card.settled) settle(rv, card, outcomeOf({ approved: approve, by: "user" })); })
    .catch((error) => refused(rv, card, error.message));
}

/** An error frame that answers an approval frame of this page; true if it was one. */
export function approvalRefused(frame) {
  const sent = frames.get(frame.client_message_id);
  if (!sent) return false;
  frames.delete(frame.client_message_id);
  refused(sent.rv, sent.card, frame.message);
  return true;
}

/** Not taken: decided already (another tab, the timeout), or it did not get through. Which one? */
async function refused(rv, card, message) {
  if (card.settled) return;
  let run = null;
  try {
    run = await api(`/api/runs/${encodeURIComponent(rv.runId)}`);
  } catch { /* keep asking */ }
  if (card.settled) return;
  const open = run && run.status === "waiting" &&
    (run.pending_approvals || []).some((q) => q && q.tool_call_id === card.id);
  if (run && !open) {
    settle(rv, card, { kind: "ended", text: "Decided already" }); // its approval_decided says how
    rv.requestReplay();
  } else {
    card.setBusy(false, message || "Your answer did not get through. Try again.");
  }
}

/** Every open question of the user (on load, on reconnect, on opening a thread). */
export async function loadPendingApprovals() {
  if (!state.token) return;
  const since = clock;
  const request = ++loading;
  let data;
  try {
    data = await api("/api/approvals/pending");
  } catch {
    return; // the live events still mark what they ask
  }
  if (request !== loading || !state.token) return;
  const open = new Set();
  for (const item of Array.isArray(data && data.approvals) ? data.approvals : []) {
    if (!item || typeof item.run_id !== "string" || typeof item.tool_call_id !== "string") continue;
    const { run_id: runId, thread_id: threadId, ...question } = item;
    open.add(keyOf(runId, item.tool_call_id));
    mark(runId, threadId, question);
  }
  let changed = false;
  for (const [key, entry] of state.asking) {
    // Not in the list and not asked since the list was asked for: it was answered meanwhile.
    if (!open.has(key) && entry.at <= since) changed = state.asking.delete(key) || changed;
  }
  if (changed) onAskingChanged();
  showPendingApprovals();
}

/** Draw the open questions of the runs this page has drawn (history shows them without their steps). */
export function showPendingApprovals() {
  for (const entry of state.asking.values()) {
    const rv = state.runs.get(entry.runId);
    if (rv && !rv.done) askApproval(rv, entry.question);
  }
}
