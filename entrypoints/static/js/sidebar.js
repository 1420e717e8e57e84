// The thread sidebar on narrow screens: open it over the chat, close it, follow the media query.
import { NARROW, ui } from "./state.js";

export function openSidebar() {
  document.body.classList.add("sidebar-open");
  ui.sidebarToggle.setAttribute("aria-expanded", "true");
  ui.scrim.hidden = false;
  ui.sidebar.inert = false;
  ui.chatMain.inert = true;
  const current = ui.threadList.querySelector('[aria-current="page"]');
  (current || ui.newChat).focus();
}

export function closeSidebar(returnFocus = true) {
  const wasOpen = document.body.classList.contains("sidebar-open");
  document.body.classList.remove("sidebar-open");
  ui.sidebarToggle.setAttribute("aria-expanded", "false");
  ui.scrim.hidden = true;
  ui.chatMain.inert = false;
  ui.sidebar.inert = NARROW.matches;
  if (wasOpen && returnFocus) ui.sidebarToggle.focus();
}

export function syncSidebarMode() {
  if (!NARROW.matches) closeSidebar(false);
  else ui.sidebar.inert = !document.body.classList.contains("sidebar-open");
}
