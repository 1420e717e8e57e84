// A small, safe Markdown renderer for answers: builds DOM nodes from the model's text, never HTML.
// Handles fenced code blocks, headings, lists, block quotes, paragraphs, inline code, **bold**,
// *italic*/_italic_ and [links](https://…) (http, https and mailto only; they open in a new tab with
// rel="noopener noreferrer"). Anything else stays text, raw HTML included: it is shown, not run.
// Blocks are separated by "\n" text nodes so that the element's textContent keeps the line breaks.
import { h } from "./dom.js";

const FENCE = /^\s{0,3}(```+|~~~+)\s*([\w+#.-]*)\s*$/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const BULLET = /^\s{0,3}([-*+])\s+(.*)$/;
const NUMBERED = /^\s{0,3}(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const SAFE_URL = /^(https?:\/\/|mailto:)[^\s]+$/i;

/** The answer's text as a DocumentFragment of safe nodes. */
export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = String(text || "").split("\n");
  let i = 0;
  const blocks = [];
  while (i < lines.length) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i += 1; // the closing fence (or the end of an answer still streaming)
      const code = h("code", { "data-lang": fence[2] || null }, body.join("\n"));
      blocks.push(h("pre", { class: "md-code", tabindex: "0" }, code));
      continue;
    }
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      const level = Math.min(6, heading[1].length + 2); // h3..h6: below the page's own headings
      blocks.push(inline(h(`h${level}`, { class: "md-heading" }), heading[2]));
      i += 1;
      continue;
    }
    if (BULLET.test(line) || NUMBERED.test(line)) {
      const ordered = !BULLET.test(line);
      const pattern = ordered ? NUMBERED : BULLET;
      const first = ordered ? Number(NUMBERED.exec(line)[1]) : null;
      const list = h(ordered ? "ol" : "ul", { class: "md-list", start: ordered && first !== 1 ? first : null });
      while (i < lines.length && pattern.test(lines[i])) {
        const item = inline(h("li"), pattern.exec(lines[i])[2]);
        i += 1;
        // Continuation lines (indented, not a new item) belong to this item.
        while (i < lines.length && /^\s{2,}\S/.test(lines[i]) && !pattern.test(lines[i])) {
          item.append("\n");
          inline(item, lines[i].trim());
          i += 1;
        }
        if (list.childElementCount) list.append("\n");
        list.append(item);
      }
      blocks.push(list);
      continue;
    }
    if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) quoted.push(QUOTE.exec(lines[i++])[1]);
      blocks.push(inline(h("blockquote", { class: "md-quote" }), quoted.join("\n")));
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) && !HEADING.test(lines[i]) &&
           !BULLET.test(lines[i]) && !NUMBERED.test(lines[i]) && !QUOTE.test(lines[i])) {
      para.push(lines[i++]);
    }
    blocks.push(inline(h("p", { class: "md-p" }), para.join("\n")));
  }
  blocks.forEach((block, index) => {
    if (index) out.append("\n\n");
    out.append(block);
  });
  return out;
}

// Inline spans, leftmost first: `code`, **bold**, *italic* or _italic_, [text](url).
const INLINE = /`([^`\n]+)`|\*\*(?=\S)([\s\S]*?\S)\*\*|__(?=\S)([\s\S]*?\S)__|\*(?=[^\s*])([^*\n]*?[^\s*])\*(?!\*)|(?<![\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?![\w])|\[([^\]\n]+)\]\(([^()\s]+)\)/;

/** Append the inline Markdown of text to parent; returns parent. */
export function inline(parent, text, depth = 0) {
  let rest = text;
  while (rest) {
    const match = depth < 4 ? INLINE.exec(rest) : null;
    if (!match) {
      parent.append(rest);
      break;
    }
    if (match.index) parent.append(rest.slice(0, match.index));
    const [whole, code, bold1, bold2, em1, em2, label, url] = match;
    if (code !== undefined) parent.append(h("code", { class: "md-inline-code" }, code));
    else if (bold1 !== undefined || bold2 !== undefined) parent.append(inline(h("strong"), bold1 ?? bold2, depth + 1));
    else if (em1 !== undefined || em2 !== undefined) parent.append(inline(h("em"), em1 ?? em2, depth + 1));
    else if (SAFE_URL.test(url)) {
      parent.append(inline(h("a", { href: url, target: "_blank", rel: "noopener noreferrer" }), label, depth + 1));
    } else {
      parent.append(whole); // a link to anything else (javascript:, data:, relative) stays text
    }
    rest = rest.slice(match.index + whole.length);
  }
  return parent;
}
