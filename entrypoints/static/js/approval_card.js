// An approval card in a run's timeline: a tool call that waits for its user's yes or no (Approve,
// Deny, "Always allow in this thread"), and once decided, that decision in one line.
import { h, formatValue } from "./dom.js";

/** What a decision (approval_decided's data) reads as: { kind, text }; kind styles the card. */
export function outcomeOf(data) {
  if (data.by === "timeout") return { kind: "timeout", text: "Timed out" };
  if (data.approved) {
    return { kind: "approved", text: data.by === "grant" ? "Approved by your standing grant" : "Approved" };
  }
  const reason = typeof data.reason === "string" && data.reason.trim() ? `: ${data.reason.trim()}` : "";
  return { kind: "denied", text: `Denied${reason}` };
}

function untilText(iso) {
  const when = new Date(iso);
  if (!Number.isFinite(when.getTime())) return "";
  const sameDay = when.toDateString() === new Date().toDateString();
  const time = when.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  return sameDay ? time : `${when.toLocaleDateString(undefined, { month: "short", day: "numeric" })}, ${time}`;
}

export class ApprovalCard {
  /** onDecide(approve, rememberInThread) is called once per click; null for a card nobody can answer. */
  constructor(id, onDecide) {
    this.id = id;
    this.onDecide = onDecide;
    this.asked = false;
    this.busy = false;
    this.settled = false;
    this.tool = "";
    this.body = [];
    this.kicker = h("span", { class: "tool-kicker" }, "Approval needed");
    this.nameEl = h("code", { class: "tool-name", "data-testid": "approval-tool", hidden: true });
    this.stateEl = h("span", { class: "tool-state", "data-testid": "approval-outcome" }, "waiting for you");
    this.el = h("div", {
      class: "step tool-card approval-card",
      "data-testid": "approval-card",
      "data-tool-call-id": id,
      "data-state": "pending",
      role: "group",
      "aria-label": "Approval needed",
      tabindex: "-1",
    },
    h("div", { class: "tool-head" },
      h("span", { class: "approval-icon", "aria-hidden": "true" }, "?"),
      this.kicker, this.nameEl, h("span", { class: "tool-spacer" }), this.stateEl));
  }

  /** The question (approval_required's data): what the tool is, with what, and the two buttons. */
  ask(data) {
    if (this.asked || this.settled) return;
    this.asked = true;
    this.tool = typeof data.tool === "string" && data.tool ? data.tool : "tool";
    this.el.dataset.tool = this.tool;
    this.el.setAttribute("aria-label", `Approval needed: ${this.tool}`);
    this.nameEl.textContent = this.tool;
    this.nameEl.hidden = false;
    const until = untilText(data.expires_at);
    this.remember = h("input", { type: "checkbox", "data-testid": "approval-remember" });
    this.approveButton = h("button", { type: "button", class: "button button-primary", "data-testid": "approval-approve" },
      "Approve");
    this.denyButton = h("button", { type: "button", class: "button button-danger", "data-testid": "approval-deny" },
      "Deny");
    this.approveButton.addEventListener("click", () => this.decide(true));
    this.denyButton.addEventListener("click", () => this.decide(false));
    this.note = h("p", { class: "approval-note", "data-testid": "approval-note", hidden: true });
    this.body = [
      h("p", { class: "approval-lead" },
        "The assistant wants to run this tool. It goes on when you answer",
        until ? ` (until ${until}).` : "."),
      h("div", { class: "tool-section" },
        h("span", { class: "tool-label" }, "Arguments"),
        h("pre", { class: "tool-json", "data-testid": "approval-arguments" }, formatValue(data.arguments ?? {}))),
      h("div", { class: "approval-actions" },
        h("label", { class: "approval-remember" }, this.remember, "Always allow in this thread"),
        h("span", { class: "tool-spacer" }),
        this.approveButton, this.denyButton),
      this.note,
    ];
    this.el.append(...this.body);
  }

  decide(approve) {
    if (this.settled || this.busy || !this.onDecide) return;
    this.setBusy(true);
    this.onDecide(approve, approve && this.remember.checked);
  }

  /** Sending (buttons off) or back to asking, with a line saying why if the answer did not go through. */
  setBusy(busy, message = "") {
    if (this.settled || !this.asked) return;
    // Focus must not fall to the page when the focused button turns disabled: keep it on the card.
    if (busy && this.el.contains(document.activeElement)) this.el.focus();
    this.busy = busy;
    this.el.dataset.state = busy ? "sending" : "pending";
    this.stateEl.textContent = busy ? "sending…" : "waiting for you";
    for (const control of [this.approveButton, this.denyButton, this.remember]) control.disabled = busy;
    this.note.textContent = message;
    this.note.hidden = !message;
  }

  /** The decision: the card becomes one line; again with a truer outcome if one comes later. */
  settle({ kind, text }) {
    const hadFocus = this.el.contains(document.activeElement);
    this.settled = true;
    this.busy = false;
    for (const node of this.body) node.remove();
    this.body = [];
    this.el.dataset.state = kind;
    this.kicker.textContent = "Approval";
    this.stateEl.textContent = text;
    this.el.setAttribute("aria-label", this.tool ? `Approval for ${this.tool}: ${text}` : `Approval: ${text}`);
    if (hadFocus) this.el.focus();
  }
}
