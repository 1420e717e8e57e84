// One run's live timeline (RunView): applies the run's events to its DOM, stops it, asks what became of it.
import { api } from "./api.js";
import { approvalDecided, approvalsEnded, askApproval, shownAsDenied } from "./approvals.js";
import { updateComposer, showComposerError } from "./composer.js";
import { h } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import {
  completeToolCard, copyButton, foldThinking, runShell, stoppedText, thinkingStep, toolCard, usageText,
} from "./run_render.js";
import { conn, send } from "./socket.js";
import { state } from "./state.js";

// What to do when the server says a run completed that the page saw no ending for: its answer is in
// the thread's history, so app.js hooks this to a history reload (conversation.js sits above this).
let onEndedUnseen = () => {};
export function whenRunEndedUnseen(fn) {
  onEndedUnseen = fn;
}

export class RunView {
  constructor({ runId = null, threadId = null, clientMessageId = null, text = null } = {}) {
    this.runId = runId;
    this.threadId = threadId;
    this.clientMessageId = clientMessageId;
    this.text = text;
    this.order = ++state.order;
    this.lastSeq = 0;
    this.firstSeq = 0; // the first event drawn: a run whose start this page missed is redrawn from history
    this.done = false;
    this.fromHistory = false;
    this.sent = false;
    this.awaitingThread = false;
    this.cancelRequested = false;
    this.replayRequested = false;
    this.statusCheckedAt = 0;
    this.tools = new Map();
    this.approvals = new Map(); // tool_call_id -> ApprovalCard
    this.answerText = "";
    this.userEl = null;
    this.fold = null; // the "Thought for …" fold the thinking lines go into once the answer starts
    this.startedAt = NaN;
    this.eventAt = NaN;

    Object.assign(this, runShell(runId));
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
    this.approvals.clear();
    this.answerText = "";
    this.fold = null;
    this.firstSeq = 0;
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
    this.eventAt = Date.parse(event.ts);
    if (!this.firstSeq && typeof event.seq === "number") this.firstSeq = event.seq;
    switch (event.type) {
      case "agent_started":
        this.setStatus("running");
        this.startedAt = this.eventAt;
        this.setWaiting("Thinking…");
        break;
      case "run_resumed":
        this.resumed(data);
        break;
      case "agent_thinking":
        this.setStatus("running");
        this.thinking(typeof data.text === "string" ? data.text : "");
        break;
      case "approval_required":
        askApproval(this, data);
        break;
      case "approval_decided":
        approvalDecided(this, data);
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
    this.stepsEl.append(thinkingStep(text));
  }

  toolExecuting(data) {
    const id = data.tool_call_id || `tool_${this.tools.size + 1}`;
    const name = typeof data.tool === "string" && data.tool ? data.tool : "tool";
    const entry = toolCard(id, name, data.arguments);
    // The same call again: it was cut off by a server that stopped and runs again; one card.
    this.tools.get(id)?.card.remove();
    this.tools.set(id, entry);
    this.stepsEl.append(entry.card);
    return entry;
  }

  toolCompleted(data) {
    const id = data.tool_call_id || `tool_${this.tools.size}`;
    if (!this.tools.has(id) && shownAsDenied(this, data)) return;
    const entry = this.tools.get(id) || this.toolExecuting({ tool_call_id: id, tool: data.tool });
    completeToolCard(entry, data);
  }

  /** Another server process took the run over: what the cut-off step streamed is superseded. */
  resumed(data) {
    this.setStatus("running");
    this.answerText = typeof data.text === "string" ? data.text : "";
    this.drawAnswer();
    this.stepsEl.append(thinkingStep("The server running this was restarted; picking up where it left off"));
  }

  delta(text) {
    if (!text) return;
    this.answerText += text;
    this.answerEl.classList.add("is-streaming");
    this.drawAnswer();
  }

  completed(data) {
    if (typeof data.text === "string") this.answerText = data.text;
    this.drawAnswer();
    this.answerEl.classList.remove("is-streaming");
    const usage = usageText(data.usage && typeof data.usage === "object" ? data.usage : null);
    if (usage) {
      this.metaEl.replaceChildren(h("span", { "data-testid": "run-usage" }, usage));
      this.metaEl.hidden = false;
    }
    this.addCopyButton();
    this.finish("completed");
  }

  /** The answer as safe Markdown; once it has started, the thinking lines fold into one line. */
  drawAnswer() {
    this.answerEl.replaceChildren(renderMarkdown(this.answerText));
    this.answerEl.hidden = !this.answerText;
    if (this.answerText) this.fold = foldThinking(this.stepsEl, this.fold, this.eventAt - this.startedAt);
  }

  addCopyButton() {
    if (!this.answerText || !navigator.clipboard || !window.isSecureContext) return;
    this.metaEl.append(copyButton(() => this.answerText));
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
    this.statusEl.replaceChildren(h("span", {}, stoppedText(reason)));
    this.statusEl.className = "run-status run-stopped";
    this.statusEl.hidden = false;
    this.answerEl.classList.remove("is-streaming");
    this.finish("cancelled");
  }

  /** A run known only from the thread's history: its final answer. */
  showFinalText(text) {
    this.answerText = text || "";
    this.drawAnswer();
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
    approvalsEnded(this);
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
    else if (run.status === "completed") onEndedUnseen();
    else {
      this.setStatus(run.status);
      for (const question of run.pending_approvals || []) askApproval(this, question);
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
