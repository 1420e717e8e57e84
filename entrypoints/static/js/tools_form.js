// The form that adds one of the user's own MCP servers (POST /api/mcp/servers): name, URL, header rows
// (a name and a secret value each, as many as needed), approval. The server checks everything; its
// message shows in the form as it is.
import { api } from "./api.js";
import { $, h } from "./dom.js";

const el = {
  form: $("server-form"),
  name: $("mcp-name"),
  url: $("mcp-url"),
  rows: $("header-rows"),
  addHeader: $("add-header"),
  error: $("server-form-error"),
  submit: $("server-submit"),
};

let rowIds = 0;
let busy = false;
let hooks = { onAdded: () => {}, onBusy: () => {} };

function showError(message) {
  el.error.textContent = message || "";
  el.error.hidden = !message;
}

function renumberRows() {
  [...el.rows.children].forEach((row, index) => {
    const label = `Header ${index + 1}`;
    row.setAttribute("aria-label", label);
    row.querySelector(".header-remove").setAttribute("aria-label", `Remove ${label.toLowerCase()}`);
  });
}

function headerRow() {
  const id = ++rowIds;
  const name = h("input", {
    id: `mcp-header-name-${id}`, type: "text", class: "header-name", autocomplete: "off", autocapitalize: "none",
    spellcheck: "false", maxlength: "64", placeholder: "Authorization", "data-testid": "mcp-header-name",
  });
  const value = h("input", {
    id: `mcp-header-value-${id}`, type: "password", class: "header-value", autocomplete: "new-password",
    spellcheck: "false", maxlength: "4096", placeholder: "Bearer …", "data-testid": "mcp-header-value",
  });
  const remove = h("button", { type: "button", class: "icon-button header-remove", "data-testid": "mcp-header-remove" },
    h("span", { "aria-hidden": "true" }, "×"));
  const row = h("div", { class: "header-row", role: "group", "data-testid": "mcp-header-row" },
    h("div", { class: "field" }, h("label", { for: name.id }, "Header name"), name),
    h("div", { class: "field" }, h("label", { for: value.id }, "Value"), value),
    remove);
  remove.addEventListener("click", () => {
    const next = row.nextElementSibling || row.previousElementSibling;
    row.remove();
    renumberRows();
    (next ? next.querySelector(".header-name") : el.addHeader).focus();
  });
  return row;
}

function addRow({ focus = false } = {}) {
  const row = headerRow();
  el.rows.append(row);
  renumberRows();
  if (focus) row.querySelector(".header-name").focus();
}

/** Back to empty: one blank header row, no secrets left in the page. */
export function resetServerForm() {
  el.form.reset();
  el.rows.replaceChildren();
  addRow();
  showError("");
}

/** The headers the rows name, or a sentence saying what to fix (with the input to focus). */
function readHeaders() {
  const headers = {};
  for (const row of el.rows.children) {
    const nameInput = row.querySelector(".header-name");
    const valueInput = row.querySelector(".header-value");
    const name = nameInput.value.trim();
    const value = valueInput.value;
    if (!name && !value) continue;
    if (!name) return { problem: "Give each header with a value a name (e.g. Authorization).", focus: nameInput };
    const same = Object.keys(headers).find((known) => known.toLowerCase() === name.toLowerCase());
    if (same) return { problem: `The header ${name} is there twice; keep one.`, focus: nameInput };
    headers[name] = value;
  }
  return { headers };
}

function setBusy(on) {
  busy = on;
  el.submit.disabled = on;
  el.submit.textContent = on ? "Adding…" : "Add server";
  el.form.setAttribute("aria-busy", on ? "true" : "false");
}

async function onSubmit(event) {
  event.preventDefault();
  if (busy) return;
  const name = el.name.value.trim();
  const url = el.url.value.trim();
  if (!name) {
    showError("Give the server a name.");
    el.name.focus();
    return;
  }
  if (!url) {
    showError("Enter the server’s URL.");
    el.url.focus();
    return;
  }
  const { headers, problem, focus } = readHeaders();
  if (problem) {
    showError(problem);
    focus.focus();
    return;
  }
  const approval = el.form.elements.approval.value === "ask" ? "ask" : "auto";
  const body = { name, url, approval };
  if (Object.keys(headers).length) body.headers = headers;
  showError("");
  hooks.onBusy();
  setBusy(true);
  let server;
  try {
    server = await api("/api/mcp/servers", { method: "POST", body });
  } catch (error) {
    setBusy(false);
    showError(error.message || "The server was not added. Try again.");
    // Point at what the message is about, when it says.
    const message = error.message || "";
    const about = /\burl\b/i.test(message) ? el.url
      : /\bheaders?\b/i.test(message) ? el.rows.querySelector(".header-name") : el.name;
    if (el.form.isConnected && error.status !== 401) (about || el.name).focus();
    return;
  }
  setBusy(false);
  resetServerForm();
  el.name.focus();
  await hooks.onAdded(server || { name });
}

export function setUpServerForm(handlers) {
  hooks = { ...hooks, ...handlers };
  el.form.addEventListener("submit", onSubmit);
  el.addHeader.addEventListener("click", () => addRow({ focus: true }));
  resetServerForm();
}
