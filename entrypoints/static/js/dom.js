// Small helpers: build elements, make ids, use sessionStorage, format values for people.

export const $ = (id) => document.getElementById(id);

/** Build an element: h("div", {class: "x", "data-testid": "y"}, "text", child, ...). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function randomId(prefix) {
  if (window.crypto && typeof window.crypto.randomUUID === "function") {
    return `${prefix}_${window.crypto.randomUUID().replaceAll("-", "")}`;
  }
  const bytes = new Uint8Array(16);
  window.crypto.getRandomValues(bytes);
  return `${prefix}_${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

export function storageGet(key) {
  try { return window.sessionStorage.getItem(key); } catch { return null; }
}
export function storageSet(key, value) {
  try {
    if (value === null || value === undefined) window.sessionStorage.removeItem(key);
    else window.sessionStorage.setItem(key, value);
  } catch { /* private mode or full storage: the page still works, a reload just forgets */ }
}

/** Arguments, results and errors as readable text: strings as they are, the rest as JSON. */
export function formatValue(value) {
  if (value === undefined) return "";
  if (typeof value === "string") {
    const trimmed = value.trim();
    if ((trimmed.startsWith("{") && trimmed.endsWith("}")) || (trimmed.startsWith("[") && trimmed.endsWith("]"))) {
      try { return JSON.stringify(JSON.parse(trimmed), null, 2); } catch { /* not JSON after all */ }
    }
    return value;
  }
  try { return JSON.stringify(value, null, 2); } catch { return String(value); }
}

export function formatDuration(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

const relativeTime = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
export function formatWhen(iso) {
  const when = Date.parse(iso);
  if (!Number.isFinite(when)) return "";
  const seconds = (when - Date.now()) / 1000;
  const abs = Math.abs(seconds);
  if (abs < 45) return "just now";
  if (abs < 3600) return relativeTime.format(Math.round(seconds / 60), "minute");
  if (abs < 86400) return relativeTime.format(Math.round(seconds / 3600), "hour");
  if (abs < 7 * 86400) return relativeTime.format(Math.round(seconds / 86400), "day");
  return new Date(when).toLocaleDateString(undefined, { month: "short", day: "numeric", year: "numeric" });
}

export function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}
