// Rendering helpers for a run's timeline: thinking lines, tool cards, stops, usage, the copy button, user bubbles.
import { h, formatValue, formatDuration, plural } from "./dom.js";

/** One line of the model's reasoning. */
export function thinkingStep(text) {
  return h("p", { class: "step thinking", "data-testid": "thinking" },
    h("span", { class: "spinner spinner-small", "aria-hidden": "true" }),
    h("span", { class: "thinking-text" }, text.trim()));
}

let cardCount = 0;

/** A running tool call's card; returns { card, state, duration, toggle, body, summary }, the parts its
 * completion changes. Its head is a button: open while it runs, one line once it has finished. */
export function toolCard(id, name, args) {
  const stateEl = h("span", { class: "tool-state", "data-testid": "tool-state" },
    h("span", { class: "spinner spinner-small", "aria-hidden": "true" }), "running");
  const duration = h("span", { class: "tool-duration", "data-testid": "tool-duration", hidden: true });
  const summary = h("span", { class: "tool-summary", "data-testid": "tool-summary", hidden: true });
  const bodyId = `tool-body-${++cardCount}`;
  const body = h("div", { class: "tool-body", id: bodyId, "data-testid": "tool-body" });
  const toggle = h("button", {
    type: "button",
    class: "tool-head tool-toggle",
    "data-testid": "tool-toggle",
    "aria-expanded": "true",
    "aria-controls": bodyId,
  },
  h("span", { class: "tool-chevron", "aria-hidden": "true" }),
  h("span", { class: "tool-kicker" }, "Tool"),
  h("code", { class: "tool-name", "data-testid": "tool-name" }, name),
  summary,
  h("span", { class: "tool-spacer" }),
  duration,
  stateEl);
  const card = h("div", {
    class: "step tool-card is-running",
    "data-testid": "tool-card",
    "data-tool-call-id": id,
    "data-tool": name,
    "data-status": "running",
    role: "group",
    "aria-label": `Tool ${name}`,
  }, toggle, body);
  toggle.addEventListener("click", () => setExpanded({ toggle, body }, toggle.getAttribute("aria-expanded") !== "true"));
  if (args !== undefined) {
    body.append(h("div", { class: "tool-section" },
      h("span", { class: "tool-label" }, "Arguments"),
      h("pre", { class: "tool-json", "data-testid": "tool-arguments" }, formatValue(args))));
  }
  return { card, state: stateEl, duration, toggle, body, summary };
}

function setExpanded(entry, open) {
  entry.toggle.setAttribute("aria-expanded", open ? "true" : "false");
  entry.body.hidden = !open;
}

/** A short one-line view of a result: the first line of its text, cut to 60 characters. */
export function shortResult(value) {
  let text = typeof value === "string" ? value : formatValue(value).replace(/\s+/g, " ");
  text = text.trim().split("\n")[0];
  return text.length > 60 ? `${text.slice(0, 59)}…` : text;
}

/** A tool card's ending (tool_completed): done with its result, or failed with its error; how long it
 * took. The card folds to one line: tool, short result, duration; its head opens it again. */
export function completeToolCard(entry, data) {
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
  entry.body.append(toolOutcome(failed, shown));
  const short = shortResult(shown);
  entry.summary.textContent = short ? `→ ${short}` : "";
  entry.summary.hidden = !short;
  setExpanded(entry, false);
}

/** A finished tool call's result, or its error. */
function toolOutcome(failed, shown) {
  return h("div", { class: "tool-section" },
    h("span", { class: "tool-label" }, failed ? "Error" : "Result"),
    h("pre", {
      class: failed ? "tool-json tool-error" : "tool-json",
      "data-testid": failed ? "tool-error" : "tool-result",
    }, formatValue(shown)));
}

/** The parts of a run's timeline (RunView's elements). */
export function runShell(runId) {
  const waitingText = h("span", {}, "Sending…");
  const waitingEl = h("p", { class: "run-waiting", "data-testid": "run-waiting" },
    h("span", { class: "spinner", "aria-hidden": "true" }), waitingText);
  const stepsEl = h("div", { class: "run-steps" });
  const answerEl = h("div", { class: "answer", "data-testid": "answer", hidden: true });
  const statusEl = h("p", { class: "run-status", "data-testid": "run-status", hidden: true });
  const metaEl = h("div", { class: "run-meta", hidden: true });
  const el = h("article", {
    class: "run is-running",
    "data-testid": "run-timeline",
    "data-run-id": runId || "",
    "data-status": "pending",
    "aria-label": "Reply",
    "aria-busy": "true",
  }, stepsEl, waitingEl, answerEl, statusEl, metaEl);
  return { waitingText, waitingEl, stepsEl, answerEl, statusEl, metaEl, el };
}

/** Move the loose thinking lines into the run's fold (made at the first of them); returns the fold. */
export function foldThinking(stepsEl, fold, ms) {
  const loose = Array.from(stepsEl.children).filter((node) => node.classList.contains("thinking"));
  if (!loose.length) return fold;
  if (!fold) {
    fold = thoughtFold(ms);
    stepsEl.insertBefore(fold.el, loose[0]);
  }
  fold.body.append(...loose);
  return fold;
}

/** The fold the thinking lines go into once the answer starts: "Thought for 0.2 s", opens on click. */
export function thoughtFold(ms) {
  const bodyId = `thought-body-${++cardCount}`;
  const body = h("div", { class: "thought-body", id: bodyId, hidden: true });
  const took = Number.isFinite(ms) && ms >= 0 ? (ms < 60000 ? `${(ms / 1000).toFixed(1)} s` : formatDuration(ms)) : "";
  const toggle = h("button", {
    type: "button", class: "thought-toggle", "data-testid": "thought-toggle",
    "aria-expanded": "false", "aria-controls": bodyId,
  }, h("span", { class: "tool-chevron", "aria-hidden": "true" }), took ? `Thought for ${took}` : "Thoughts");
  toggle.addEventListener("click", () => setExpanded({ toggle, body }, toggle.getAttribute("aria-expanded") !== "true"));
  return { el: h("div", { class: "step thought", "data-testid": "thought" }, toggle, body), body };
}

/** What a stopped run says, from agent_cancelled's reason. */
export function stoppedText(reason) {
  const reasons = {
    interrupted: "a newer message took over",
    timeout: "it took too long",
    shutdown: "the server was restarting",
    approval_timeout: "nobody answered the approval in time",
  };
  return !reason || reason === "user" ? "Stopped" : `Stopped: ${reasons[reason] || reason}`;
}

/** A run's usage as one line ("2 tool calls · 1 model call · 812 tokens · 3.4 s"), or "" if none. */
export function usageText(usage) {
  if (!usage) return "";
  const parts = [];
  if (usage.tool_calls) parts.push(plural(usage.tool_calls, "tool call"));
  if (usage.model_calls) parts.push(plural(usage.model_calls, "model call"));
  const tokens = (usage.prompt_tokens || 0) + (usage.completion_tokens || 0);
  if (tokens) parts.push(plural(tokens, "token"));
  if (usage.duration_ms) parts.push(formatDuration(usage.duration_ms));
  return parts.join(" · ");
}

/** A Copy button for an answer; getText() is read at the click, so it copies the latest text. */
export function copyButton(getText) {
  const button = h("button", { type: "button", class: "button button-link copy-answer", "data-testid": "copy-answer" }, "Copy");
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(getText());
      button.textContent = "Copied";
    } catch {
      button.textContent = "Could not copy";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 1800);
  });
  return button;
}

export function userBubble(text, messageId) {
  return h("div", {
    class: "msg msg-user",
    "data-testid": "user-message",
    "data-message-id": messageId || null,
  }, h("span", { class: "visually-hidden" }, "You said: "), h("div", { class: "msg-text" }, text));
}
