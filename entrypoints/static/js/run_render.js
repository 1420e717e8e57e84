// Rendering helpers for a run's timeline: thinking lines, tool cards, stops, usage, the copy button, user bubbles.
import { h, formatValue, formatDuration, plural } from "./dom.js";

/** One line of the model's reasoning. */
export function thinkingStep(text) {
  return h("p", { class: "step thinking", "data-testid": "thinking" },
    h("span", { class: "spinner spinner-small", "aria-hidden": "true" }),
    h("span", { class: "thinking-text" }, text.trim()));
}

/** A running tool call's card; returns { card, state, duration }, the parts its completion changes. */
export function toolCard(id, name, args) {
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
  if (args !== undefined) {
    card.append(h("div", { class: "tool-section" },
      h("span", { class: "tool-label" }, "Arguments"),
      h("pre", { class: "tool-json", "data-testid": "tool-arguments" }, formatValue(args))));
  }
  return { card, state: stateEl, duration };
}

/** A tool card's ending (tool_completed): done with its result, or failed with its error; how long it took. */
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
  entry.card.append(toolOutcome(failed, shown));
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
