// HTTP: JSON requests to the server's API with the bearer token; failures as ApiError.
import { state } from "./state.js";

// What a 401 for the current token does (app.js: log out). A hook, so that HTTP need not import auth.
let onUnauthorized = () => {};
export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function fallbackMessage(status) {
  if (status === 401) return "Your session has ended. Please log in again.";
  if (status === 404) return "That was not found. It may have been deleted.";
  if (status === 413) return "That message is too long. Shorten it and try again.";
  if (status === 429) return "Too many requests. Wait a moment and try again.";
  if (status === 503) return "The server is starting up or busy. Try again in a moment.";
  if (status >= 500) return "Something went wrong on the server. Try again in a moment.";
  return `The request failed (HTTP ${status}).`;
}

export async function api(path, { method = "GET", body, auth = true } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const token = state.token;
  if (auth && token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError(0, "network", "Could not reach the server. Check your connection and try again.");
  }
  let data = null;
  const text = response.status === 204 ? "" : await response.text().catch(() => "");
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok) {
    const error = (data && typeof data === "object" && data.error) || {};
    const failure = new ApiError(response.status, error.code || `http_${response.status}`,
      typeof error.message === "string" && error.message ? error.message : fallbackMessage(response.status));
    if (response.status === 401 && auth && token && token === state.token) {
      onUnauthorized();
    }
    throw failure;
  }
  return data;
}
