// The composer's own state: its error line, its height, and its Stop button.
import { liveRunsForCurrentThread, ui } from "./state.js";

export function showComposerError(message) {
  ui.errorText.textContent = message;
  ui.errorArea.hidden = !message;
}

export function hideComposerError() {
  showComposerError("");
}

export function autosize() {
  const input = ui.input;
  input.rows = 1;
  const style = window.getComputedStyle(input);
  const line = parseFloat(style.lineHeight) || 22;
  const padding = (parseFloat(style.paddingTop) || 0) + (parseFloat(style.paddingBottom) || 0);
  const rows = Math.max(1, Math.min(8, Math.round((input.scrollHeight - padding) / line)));
  input.rows = rows;
}

export function activeRunsInView() {
  return liveRunsForCurrentThread().filter((rv) => !rv.done && rv.el.isConnected);
}

export function updateComposer() {
  const active = activeRunsInView();
  const stopping = active.length > 0 && active.every((rv) => rv.cancelRequested);
  ui.stopButton.hidden = active.length === 0;
  ui.stopButton.disabled = stopping;
  ui.stopButton.textContent = stopping ? "Stopping…" : "Stop";
  ui.composer.classList.toggle("is-running", active.length > 0);
}
