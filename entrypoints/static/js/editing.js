// Edit a past message and send it again: the message's bubble becomes a text box; sending forks the
// thread at that message (POST /api/threads/{id}/fork: a new thread with the history before it), opens
// the new thread and sends the edited text there. The original thread stays as it was.
import { api } from "./api.js";
import { showComposerError } from "./composer.js";
import { h } from "./dom.js";
import { submitMessage } from "./sending.js";
import { state } from "./state.js";
import { scheduleThreadsReload, selectThread } from "./threads.js";

export function editMessage(messageId, text, bubble) {
  if (!messageId || !state.threadId || bubble.querySelector(".edit-form")) return;
  const threadId = state.threadId;
  const box = h("textarea", {
    class: "edit-input", "data-testid": "edit-input", rows: "3", "aria-label": "Edited message",
  });
  box.value = text;
  const send = h("button", { type: "submit", class: "button button-primary", "data-testid": "edit-send" },
    "Send as a new chat");
  const cancel = h("button", { type: "button", class: "button button-secondary", "data-testid": "edit-cancel" },
    "Cancel");
  const note = h("p", { class: "edit-note" }, "Sending starts a new chat from this point; this one stays.");
  const form = h("form", { class: "edit-form", "data-testid": "edit-form" }, box, note,
    h("div", { class: "edit-actions" }, cancel, send));
  const shown = Array.from(bubble.children);
  for (const node of shown) node.hidden = true;
  bubble.append(form);
  box.focus();
  const close = () => {
    form.remove();
    for (const node of shown) node.hidden = false;
    bubble.querySelector(".edit-message")?.focus();
  };
  cancel.addEventListener("click", close);
  box.addEventListener("keydown", (event) => {
    if (event.key === "Escape") { event.preventDefault(); close(); }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const edited = box.value;
    if (!edited.trim()) { box.focus(); return; }
    send.disabled = true;
    try {
      const forked = await api(`/api/threads/${encodeURIComponent(threadId)}/fork`,
        { method: "POST", body: { message_id: messageId } });
      const thread = forked && forked.thread;
      if (!thread || typeof thread.thread_id !== "string") throw new Error("The server did not make the new chat.");
      state.threads.unshift(thread);
      selectThread(thread.thread_id);
      submitMessage(edited);
      scheduleThreadsReload(0);
    } catch (error) {
      send.disabled = false;
      showComposerError(`Could not send the edit: ${error.message}`);
    }
  });
}
