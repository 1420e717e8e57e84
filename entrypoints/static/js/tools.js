// The Tools dialog: the tools the user's assistant can use (GET /api/tools: builtin, the service's MCP
// servers', the user's own), servers that could not be reached, and the user's own MCP servers
// (GET /api/mcp/servers) with Remove; the form that adds one is tools_form.js.
import { api } from "./api.js";
import { $, h, plural } from "./dom.js";
import { state, ui } from "./state.js";
import { resetServerForm, setUpServerForm } from "./tools_form.js";

const el = {
  dialog: $("tools-dialog"),
  close: $("tools-close"),
  status: $("tools-status"),
  serversHeading: $("servers-heading"),
  serversLoading: $("servers-loading"),
  serversError: $("servers-error"),
  serverList: $("server-list"),
  serversEmpty: $("servers-empty"),
  toolsLoading: $("tools-loading"),
  toolsError: $("tools-error"),
  unreachable: $("unreachable-list"),
  groups: $("tool-groups"),
};

let serversRequest = 0;
let toolsRequest = 0;

function showText(node, text) {
  node.textContent = text || "";
  node.hidden = !text;
}

/** A line in the live region (always there, empty when quiet, so that every change is read out). */
function say(text) {
  el.status.textContent = text || "";
}

export function openTools() {
  if (!state.token) return;
  say("");
  if (!el.dialog.open) el.dialog.showModal();
  refresh();
}

export function closeTools() {
  if (el.dialog.open) el.dialog.close();
}

/** Signed out: close, and forget what the dialog showed (the form's secrets too). */
export function forgetTools() {
  closeTools();
  serversRequest += 1;
  toolsRequest += 1;
  el.serverList.replaceChildren();
  el.groups.replaceChildren();
  el.unreachable.replaceChildren();
  el.unreachable.hidden = true;
  say("");
  resetServerForm();
}

/** Both lists again, e.g. after a server was added or removed. */
function refresh() {
  return Promise.allSettled([loadServers(), loadTools()]);
}

// ---------------------------------------------------------------------------------------------
// The user's own servers

async function loadServers() {
  const request = ++serversRequest;
  el.serversLoading.hidden = el.serverList.childElementCount > 0;
  let data;
  try {
    data = await api("/api/mcp/servers");
  } catch (error) {
    if (request !== serversRequest) return;
    el.serversLoading.hidden = true;
    showText(el.serversError, `Could not load your servers: ${error.message}`);
    return;
  }
  if (request !== serversRequest) return;
  el.serversLoading.hidden = true;
  showText(el.serversError, "");
  renderServers(Array.isArray(data && data.servers) ? data.servers : []);
}

function renderServers(servers) {
  const items = servers.map((server) => {
    const names = Array.isArray(server.header_names) ? server.header_names : [];
    const remove = h("button", {
      type: "button",
      class: "button button-danger server-remove",
      "data-testid": "mcp-server-remove",
      "data-name": server.name,
      "aria-label": `Remove server ${server.name}`,
    }, "Remove");
    remove.addEventListener("click", () => removeServer(server.name, remove));
    return h("li", { class: "server-item", "data-testid": "mcp-server", "data-name": server.name },
      h("div", { class: "server-main" },
        h("span", { class: "server-name", "data-testid": "mcp-server-name" }, server.name),
        server.approval === "ask" ? h("span", { class: "badge badge-ask" }, "Asks first") : null,
        h("span", { class: "server-url", "data-testid": "mcp-server-url" }, server.url),
        h("span", { class: "server-headers", "data-testid": "mcp-server-headers" },
          names.length ? `Headers: ${names.join(", ")}` : "No headers")),
      remove);
  });
  el.serverList.replaceChildren(...items);
  el.serversEmpty.hidden = items.length > 0;
}

async function removeServer(name, button) {
  if (!window.confirm(`Remove the server “${name}”? Your assistant will no longer have its tools, and its ` +
    "headers are deleted.")) return;
  button.disabled = true;
  try {
    await api(`/api/mcp/servers/${encodeURIComponent(name)}`, { method: "DELETE" });
  } catch (error) {
    if (error.status !== 404) {
      button.disabled = false;
      say("");
      showText(el.serversError, `Could not remove ${name}: ${error.message}`);
      return;
    }
  }
  const wasFocused = button === document.activeElement;
  const item = button.closest("li");
  const next = item && (item.nextElementSibling || item.previousElementSibling);
  item?.remove();
  el.serversEmpty.hidden = el.serverList.childElementCount > 0;
  showText(el.serversError, "");
  say(`Removed ${name}.`);
  if (wasFocused || document.activeElement === document.body) {
    (next ? next.querySelector("button") : el.serversHeading).focus();
  }
  await refresh();
}

/** The form added a server: list it, and its tools. */
async function added(server) {
  say(`Added ${server.name}. Loading its tools…`);
  await refresh();
  if (!el.dialog.open) return;
  const count = el.groups.querySelectorAll(`[data-server="${CSS.escape(server.name)}"]`).length;
  const gone = [...el.unreachable.children].some((li) => li.dataset.server === server.name);
  say(gone ? `Added ${server.name}, but it could not be reached: see below.`
    : `Added ${server.name}: ${plural(count, "tool")}.`);
}

// ---------------------------------------------------------------------------------------------
// The tools

async function loadTools() {
  const request = ++toolsRequest;
  el.toolsLoading.hidden = false;
  el.groups.setAttribute("aria-busy", "true");
  let data;
  try {
    data = await api("/api/tools");
  } catch (error) {
    if (request !== toolsRequest) return;
    el.toolsLoading.hidden = true;
    el.groups.setAttribute("aria-busy", "false");
    showText(el.toolsError, `Could not load the tools: ${error.message}`);
    return;
  }
  if (request !== toolsRequest) return;
  el.toolsLoading.hidden = true;
  el.groups.setAttribute("aria-busy", "false");
  showText(el.toolsError, "");
  renderTools(Array.isArray(data && data.tools) ? data.tools : [],
    Array.isArray(data && data.unreachable) ? data.unreachable : []);
}

/** Where a tool comes from: { key, kind, label } (kind: builtin, service or yours). */
function originOf(tool) {
  if (tool.source !== "mcp") return { key: "builtin", kind: "builtin", label: "Built in" };
  const server = tool.server || "";
  if (tool.owner === "user") return { key: `user ${server}`, kind: "yours", label: `Yours: ${server}` };
  return { key: `operator ${server}`, kind: "service", label: `From the service: ${server}` };
}

function argumentsOf(schema) {
  const properties = schema && typeof schema === "object" && schema.properties;
  if (!properties || typeof properties !== "object") return "";
  const required = new Set(Array.isArray(schema.required) ? schema.required : []);
  const names = Object.keys(properties).map((name) => (required.has(name) ? name : `${name}?`));
  return names.length ? `Arguments: ${names.join(", ")}` : "";
}

function toolItem(tool, origin) {
  const args = argumentsOf(tool.input_schema);
  return h("li", {
    class: "tool-item",
    "data-testid": "tool-item",
    "data-tool": tool.name,
    "data-source": origin.kind,
    "data-server": tool.server || null,
  },
  h("div", { class: "tool-item-head" },
    h("code", { class: "tool-item-name", "data-testid": "tool-item-name" }, tool.name),
    tool.approval === "ask"
      ? h("span", { class: "badge badge-ask", "data-testid": "tool-asks", title: "Asks for your approval before each call" },
        "Asks first") : null,
    h("span", { class: "visually-hidden" }, `, ${origin.label}`)),
  tool.description ? h("p", { class: "tool-item-description", "data-testid": "tool-item-description" },
    tool.description) : null,
  args ? h("p", { class: "tool-item-args" }, args) : null);
}

function renderTools(tools, unreachable) {
  const groups = new Map();
  for (const tool of tools) {
    if (!tool || typeof tool.name !== "string") continue;
    const origin = originOf(tool);
    if (!groups.has(origin.key)) groups.set(origin.key, { origin, tools: [] });
    groups.get(origin.key).tools.push(tool);
  }
  let index = 0;
  const sections = [...groups.values()].map(({ origin, tools: list }) => {
    const id = `tool-group-${++index}`;
    return h("div", { class: "tool-group", "data-testid": "tool-group", "data-source": origin.kind },
      h("h4", { class: "tool-group-title", id },
        h("span", { class: `badge badge-${origin.kind}` }, origin.label),
        h("span", { class: "tool-group-count" }, plural(list.length, "tool"))),
      h("ul", { class: "tool-items", "aria-labelledby": id }, ...list.map((tool) => toolItem(tool, origin))));
  });
  if (!sections.length) sections.push(h("p", { class: "tools-note" }, "No tools are available."));
  el.groups.replaceChildren(...sections);
  const down = unreachable.filter((u) => u && typeof u.server === "string").map((u) => h("li", {
    class: "unreachable-item", "data-testid": "tools-unreachable-item", "data-server": u.server,
  }, h("strong", {}, u.server), ` could not be reached, so its tools are missing: ${u.reason || "no reason given"}`));
  el.unreachable.replaceChildren(...down);
  el.unreachable.hidden = down.length === 0;
}

// ---------------------------------------------------------------------------------------------
// Wiring

el.close.addEventListener("click", closeTools);
// A click on the backdrop (the dialog box itself, outside its frame) closes it too.
el.dialog.addEventListener("click", (event) => {
  if (event.target === el.dialog) closeTools();
});
el.dialog.addEventListener("close", () => {
  const focused = document.activeElement;
  if (state.token && (!focused || focused === document.body || el.dialog.contains(focused))) {
    ui.toolsButton.focus();
  }
});
setUpServerForm({ onAdded: added, onBusy: () => say("") });
