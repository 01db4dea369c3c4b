// @ts-check
// The open chat: header, messages (bubbles, day separators, ticks, media,
// reactions on their message, quoted replies), older pages on scroll up.
import { html, useEffect, useLayoutEffect, useRef, useState } from "./vendor/preact-htm-3.1.1.js";
import { mediaSource } from "./api.js";
import { clock, dayKey, dayLabel, errorText, phoneOf } from "./format.js";
import { BackIcon, FileIcon, PersonIcon, PinIcon, Ticks } from "./icons.js";
import { Avatar, displayName } from "./list.js";

/** @typedef {import("./types.js").Conversation} Conversation */
/** @typedef {import("./types.js").Message} Message */

/** A media file's URL, fetched with the token when one is needed. @param {string | undefined} url */
function useMedia(url) {
  const [src, setSrc] = useState(/** @type {string | undefined} */ (undefined));
  useEffect(() => {
    let live = true;
    setSrc(undefined);
    if (url) mediaSource(url).then((s) => live && setSrc(s), () => live && setSrc(""));
    return () => {
      live = false;
    };
  }, [url]);
  return src;
}

/** @param {{m: Message}} props */
function Media({ m }) {
  const url = m.localPreview || m.mediaUrl;
  const src = useMedia(m.localPreview ? undefined : m.mediaUrl);
  const shown = m.localPreview || src;
  const c = m.content || {};
  const caption = c.caption;
  if (!url) return html`<div class="text">${m.body}</div>`;
  if (src === "" && !m.localPreview) return html`<div class="text muted">${m.body} (not available)</div>`;
  switch (m.type) {
    case "image":
      return html`<div class="media">
          ${shown ? html`<img src=${shown} alt=${caption || "Image"} loading="lazy" />` : html`<div class="media-wait">Loading image…</div>`}
        </div>
        ${caption ? html`<div class="text">${caption}</div>` : null}`;
    case "sticker":
      return shown ? html`<img class="sticker" src=${shown} alt="Sticker" />` : html`<div class="media-wait">Sticker</div>`;
    case "video":
      return html`<div class="media">${shown ? html`<video src=${shown} controls preload="metadata"></video>` : null}</div>
        ${caption ? html`<div class="text">${caption}</div>` : null}`;
    case "audio":
      return shown ? html`<audio src=${shown} controls preload="metadata"></audio>` : html`<div class="media-wait">Audio</div>`;
    default: {
      const name = c.filename || m.body.replace(/^\[Document: (.*)\]$/, "$1") || "Document";
      return html`<a class="document" href=${shown || url} download=${name} target="_blank" rel="noopener">
          <${FileIcon} /><span>${name}</span>
        </a>
        ${caption ? html`<div class="text">${caption}</div>` : null}`;
    }
  }
}

/** @param {{m: Message}} props */
function Content({ m }) {
  const c = m.content || {};
  switch (m.type) {
    case "image":
    case "video":
    case "audio":
    case "document":
    case "sticker":
      return html`<${Media} m=${m} />`;
    case "location": {
      const lat = Number(c.latitude);
      const lon = Number(c.longitude);
      const ok = Number.isFinite(lat) && Number.isFinite(lon);
      const href = ok ? `https://www.openstreetmap.org/?mlat=${lat}&mlon=${lon}#map=16/${lat}/${lon}` : undefined;
      return html`<a class="location" href=${href} target="_blank" rel="noopener noreferrer">
        <${PinIcon} />
        <span><strong>${c.name || "Location"}</strong>${c.address ? html`<br />${c.address}` : null}
          ${ok ? html`<br /><small>${lat.toFixed(5)}, ${lon.toFixed(5)}</small>` : null}</span>
      </a>`;
    }
    case "contacts": {
      const list = Array.isArray(c) ? c : Array.isArray(c.contacts) ? c.contacts : [];
      if (list.length === 0) return html`<div class="text">${m.body}</div>`;
      return html`<div class="contacts">
        ${list.map(
          (/** @type {any} */ p) => html`<div class="contact">
            <${PersonIcon} />
            <span><strong>${p?.name?.formatted_name || p?.name?.first_name || "Contact"}</strong>
              ${(p?.phones || []).map((/** @type {any} */ ph) => html`<br /><small>${ph.phone || ph.wa_id}</small>`)}</span>
          </div>`,
        )}
      </div>`;
    }
    default:
      return html`<div class="text">${m.body}</div>`;
  }
}

/** Messages put in the DOM at a time: the DOM stays small however long the chat. */
const WINDOW = 150;
/** Room in the window for a page of older messages arriving. */
const PAGE_GUESS = 60;

/** Types whose bubble ends with a line of text (the time goes on that line). */
const ENDS_IN_BLOCK = new Set(["image", "video", "audio", "document", "sticker", "location", "contacts"]);

/** @param {{m: Message, byId: Map<string, Message>, reactions: Message[], onRetry: (m: Message) => void, tail: boolean, found?: boolean}} props */
function Bubble({ m, byId, reactions, onRetry, tail, found = false }) {
  const outgoing = m.direction === "outbound";
  const failed = outgoing && m.status === "failed";
  const quotedId = m.context?.id || m.context?.message_id;
  const quoted = quotedId ? byId.get(quotedId) : undefined;
  const errorId = `error-${m._id}`;
  return html`<div
    class=${`message ${outgoing ? "out" : "in"}${tail ? " tail" : ""}${m.type === "sticker" ? " bare" : ""}${failed ? " is-failed" : ""}${found ? " found" : ""}${
      ENDS_IN_BLOCK.has(m.type) && !m.content?.caption ? " block-end" : ""
    }`}
    data-message-id=${m.messageId}
    data-status=${outgoing ? m.status : undefined}
    aria-current=${found ? "true" : undefined}
  >
    <div class="bubble">
      ${quotedId
        ? html`<div class="quote">
            <div class="quote-name">${quoted ? (quoted.direction === "outbound" ? "You" : quoted.userName) : ""}</div>
            <div class="quote-body">${quoted ? quoted.body : "Replied message"}</div>
          </div>`
        : null}
      <${Content} m=${m} />
      <span class="meta">
        <time datetime=${m.timestamp}>${clock(m.timestamp)}</time>
        ${outgoing
          ? failed
            ? html`<span class="failed-mark" tabindex="0" aria-describedby=${errorId}><${Ticks} status="failed" /></span>`
            : html`<${Ticks} status=${m.status} />`
          : null}
      </span>
      ${failed ? html`<div class="error-tip" id=${errorId} role="tooltip">${errorText(m.errors)}</div>` : null}
      ${reactions.length
        ? html`<div class="reactions" aria-label="Reactions">${reactions.map(
            (r) => html`<span title=${r.direction === "outbound" ? "You" : r.userName}>${r.content?.emoji || r.body}</span>`,
          )}</div>`
        : null}
    </div>
    ${failed && !m.retried
      ? html`<div class="failed-line">
          <span>Not sent</span>
          <button type="button" class="link-button" onClick=${() => onRetry(m)}>Retry</button>
        </div>`
      : null}
  </div>`;
}

/**
 * @param {{
 *   conversation: Conversation | undefined,
 *   conversationId: string,
 *   messages: Message[],
 *   more: boolean,
 *   onOlder: () => Promise<void>,
 *   onBack: () => void,
 *   onRetry: (m: Message) => void,
 *   via?: string | null,
 *   found?: string | null,
 *   children?: unknown,
 * }} props
 */
export function Chat({ conversation, conversationId, messages, more, onOlder, onBack, onRetry, via = null, found = null, children }) {
  /** @type {{current: HTMLDivElement | null}} */
  const log = useRef(null);
  const stick = useRef(true);
  const anchor = useRef(/** @type {{height: number, top: number} | null} */ (null));
  const loading = useRef(false);
  /** How many of the newest messages are in the DOM (more as the user scrolls up). */
  const [shown, setShown] = useState(WINDOW);
  const name = conversation ? displayName(conversation) : phoneOf(conversationId);

  useLayoutEffect(() => {
    stick.current = true;
    setShown(WINDOW);
  }, [conversationId]);

  // A search hit opened here: its message in the DOM, scrolled to, marked.
  const foundAt = found ? messages.findIndex((m) => m.messageId === found) : -1;
  useLayoutEffect(() => {
    if (foundAt < 0) return;
    const needed = messages.length - foundAt;
    if (needed > shown) {
      setShown(needed + 10);
      return;
    }
    const el = log.current?.querySelector(`[data-message-id="${CSS.escape(/** @type {string} */ (found))}"]`);
    if (el) {
      stick.current = false;
      el.scrollIntoView({ block: "center" });
    }
  }, [found, foundAt, shown]);

  useLayoutEffect(() => {
    const el = log.current;
    if (!el) return;
    if (foundAt >= 0) return;
    if (anchor.current) {
      // Older messages went in above: keep what was in view where it was.
      el.scrollTop = el.scrollHeight - anchor.current.height + anchor.current.top;
      anchor.current = null;
    } else if (stick.current) {
      el.scrollTop = el.scrollHeight;
    }
    // Too few to scroll: older ones come in without waiting for a scroll.
    if (more && !loading.current && messages.length > 0 && el.scrollHeight <= el.clientHeight + 8) {
      loading.current = true;
      onOlder().finally(() => {
        loading.current = false;
      });
    }
  }, [messages, conversationId, more, shown]);

  const onScroll = () => {
    const el = log.current;
    if (!el) return;
    stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 80;
    if (el.scrollTop < 120 && shown < messages.length) {
      // Older ones already here: put more of them in the DOM.
      anchor.current = { height: el.scrollHeight, top: el.scrollTop };
      setShown(shown + WINDOW);
    } else if (el.scrollTop < 120 && more && !loading.current) {
      setShown(messages.length + PAGE_GUESS);
      loading.current = true;
      anchor.current = { height: el.scrollHeight, top: el.scrollTop };
      onOlder().finally(() => {
        loading.current = false;
      });
    }
  };

  /** @type {Map<string, Message>} */
  const byId = new Map();
  /** @type {Map<string, Message[]>} */
  const reactionsOf = new Map();
  for (const m of messages) {
    byId.set(m.messageId, m);
    byId.set(m._id, m);
  }
  for (const m of messages) {
    if (m.type !== "reaction") continue;
    const target = m.content?.message_id || m.content?.messageId;
    if (!target || !byId.has(target)) continue;
    // A person's latest reaction replaces their earlier one; an empty emoji removes it.
    const list = (reactionsOf.get(target) || []).filter((r) => r.direction !== m.direction);
    if (m.content?.emoji) list.push(m);
    reactionsOf.set(target, list);
  }

  const items = [];
  const visible = messages.length > shown ? messages.slice(messages.length - shown) : messages;
  let day = "";
  let side = "";
  for (const m of visible) {
    if (m.type === "reaction" && byId.has(m.content?.message_id || m.content?.messageId || "")) continue;
    const key = dayKey(m.timestamp);
    const tail = key !== day || side !== m.direction;
    side = m.direction;
    if (key !== day) {
      day = key;
      items.push(html`<div class="day" key=${`day-${key}`}><span>${dayLabel(m.timestamp)}</span></div>`);
    }
    items.push(html`<${Bubble}
      key=${m.clientMessageId || m._id}
      m=${m}
      byId=${byId}
      reactions=${reactionsOf.get(m.messageId) || []}
      onRetry=${onRetry}
      tail=${tail}
      found=${m.messageId === found}
    />`);
  }

  return html`<section class="chat" aria-label=${`Chat with ${name}`}>
    <header class="chat-header">
      <button type="button" class="icon-button back" aria-label="Back" onClick=${onBack}><${BackIcon} /></button>
      <${Avatar} name=${name} id=${conversationId} small />
      <div class="chat-title">
        <div class="chat-name">${name}</div>
        <div class="chat-number">
          ${phoneOf(conversationId)}${via ? html`<span class="chat-via"> · via <span class="chat-via-number">${via}</span></span>` : null}
        </div>
      </div>
    </header>
    <div class="log" role="log" aria-label="Messages" aria-live="polite" ref=${log} onScroll=${onScroll}>
      ${more || visible.length < messages.length ? html`<div class="older-hint">Scroll up for older messages</div>` : null}
      ${items}
    </div>
    ${children}
  </section>`;
}
