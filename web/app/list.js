// @ts-check
// The conversation list: newest first, paged in as it scrolls, and
// virtualised (only the rows in view, plus a margin, are in the DOM, so
// 10,000 conversations cost a few dozen elements).
import { html, useEffect, useRef, useState } from "./vendor/preact-htm-3.1.1.js";
import { avatarHue, initials, listTime, phoneOf } from "./format.js";
import { Ticks } from "./icons.js";

/** @typedef {import("./types.js").Conversation} Conversation */

/** Height of a row, px (style.css's `.row`). */
export const ROW = 72;
/** Rows rendered above and below the visible ones. */
const MARGIN = 6;

/** @param {Conversation} c */
export function displayName(c) {
  return c.userName && c.userName !== "Business" ? c.userName : phoneOf(c.conversationId);
}

/** @param {{name: string, id: string, small?: boolean}} props */
export function Avatar({ name, id, small }) {
  return html`<span class=${`avatar hue-${avatarHue(id)}${small ? " small" : ""}`} aria-hidden="true">${initials(name)}</span>`;
}

/**
 * @param {{
 *   conversations: Conversation[],
 *   selected: string | null,
 *   onSelect: (id: string, byKeyboard?: boolean) => void,
 *   onMore: () => void,
 *   more: boolean,
 *   children?: unknown,
 * }} props
 */
export function ConversationList({ conversations, selected, onSelect, onMore, more, children }) {
  /** @type {{current: HTMLDivElement | null}} */
  const scroller = useRef(null);
  const [view, setView] = useState({ top: 0, height: 800 });

  useEffect(() => {
    const el = scroller.current;
    if (!el) return;
    const measure = () => setView({ top: el.scrollTop, height: el.clientHeight || 800 });
    measure();
    const observer = new ResizeObserver(measure);
    observer.observe(el);
    return () => observer.disconnect();
  }, []);

  const count = conversations.length;
  const first = Math.max(0, Math.floor(view.top / ROW) - MARGIN);
  const last = Math.min(count, Math.ceil((view.top + view.height) / ROW) + MARGIN);

  useEffect(() => {
    if (more && last >= count - MARGIN) onMore();
  }, [more, last, count]);

  /** @param {number} index */
  const reveal = (index) => {
    const el = scroller.current;
    if (!el) return;
    const top = index * ROW;
    if (top < el.scrollTop) el.scrollTop = top;
    else if (top + ROW > el.scrollTop + el.clientHeight) el.scrollTop = top + ROW - el.clientHeight;
  };

  /** @param {KeyboardEvent} e */
  const onKey = (e) => {
    if (count === 0) return;
    const at = conversations.findIndex((c) => c.conversationId === selected);
    let next = -1;
    if (e.key === "ArrowDown") next = at < 0 ? 0 : Math.min(count - 1, at + 1);
    else if (e.key === "ArrowUp") next = at < 0 ? 0 : Math.max(0, at - 1);
    else if (e.key === "Home") next = 0;
    else if (e.key === "End") next = count - 1;
    else return;
    e.preventDefault();
    reveal(next);
    onSelect(conversations[next].conversationId, true);
  };

  const rows = [];
  for (let i = first; i < last; i++) {
    const c = conversations[i];
    const name = displayName(c);
    const isSelected = c.conversationId === selected;
    const outgoing = c.lastMessageDirection === "outbound";
    rows.push(html`<div
      key=${c.conversationId}
      id=${`option-${c.conversationId}`}
      class=${`row${isSelected ? " selected" : ""}${c.unreadCount > 0 ? " unread" : ""}`}
      role="option"
      aria-selected=${isSelected ? "true" : "false"}
      aria-setsize=${count}
      aria-posinset=${i + 1}
      data-conversation-id=${c.conversationId}
      style=${{ transform: `translateY(${i * ROW}px)` }}
      onClick=${() => onSelect(c.conversationId)}
    >
      <${Avatar} name=${name} id=${c.conversationId} />
      <div class="row-text">
        <div class="row-line">
          <span class="row-name">${name}</span>
          <span class="row-time">${listTime(c.lastTimestamp)}</span>
        </div>
        <div class="row-line">
          <span class="row-preview">
            ${outgoing ? html`<${Ticks} status=${c.lastMessageStatus} />` : null}
            <span class="preview-text">${c.lastMessageBody}</span>
          </span>
          ${c.unreadCount > 0
            ? html`<span class="badge" aria-label=${`${c.unreadCount} unread`}>${c.unreadCount}</span>`
            : null}
        </div>
      </div>
    </div>`);
  }

  return html`<div
    class="list-scroll"
    ref=${scroller}
    onScroll=${(/** @type {Event} */ e) => {
      const el = /** @type {HTMLDivElement} */ (e.currentTarget);
      setView({ top: el.scrollTop, height: el.clientHeight });
    }}
  >
    <div
      class="listbox"
      role="listbox"
      aria-label="Conversations"
      tabindex="0"
      aria-activedescendant=${selected && rows.length ? `option-${selected}` : undefined}
      style=${{ height: `${count * ROW}px` }}
      onKeyDown=${onKey}
    >
      ${rows}
    </div>
    ${count === 0 && !children ? html`<p class="list-empty">No conversations</p>` : null}
    ${children}
  </div>`;
}
