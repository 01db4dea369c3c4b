// @ts-check
// How events and answers change what the inbox holds: pure functions, so
// that a REST reload, a resumed socket and an optimistic send can meet in
// any order and still show each message once, in its latest state.

/** @typedef {import("./types.js").Conversation} Conversation */
/** @typedef {import("./types.js").Message} Message */
/** @typedef {import("./types.js").StatusUpdate} StatusUpdate */

/** Statuses only move forward; `failed` is final. @type {Record<string, number>} */
const RANK = { pending: 0, received: 0, sent: 1, delivered: 2, read: 3, played: 4, failed: 9 };

/** @param {string} status */
export function rank(status) {
  return RANK[status] ?? 0;
}

/** The later of two statuses. @param {string} a @param {string} b */
export function laterStatus(a, b) {
  return rank(b) > rank(a) ? b : a;
}

/** WhatsApp's id beats a local one. @param {string} a @param {string} b */
function betterId(a, b) {
  if (!a) return b;
  if (!b) return a;
  return a.startsWith("wamid") ? a : b.startsWith("wamid") ? b : a.startsWith("local") ? a : b;
}

/** Newest first. @param {Conversation} a @param {Conversation} b */
export function byNewest(a, b) {
  const t = Date.parse(b.lastTimestamp) - Date.parse(a.lastTimestamp);
  return t !== 0 ? t : compare(b.lastMessageId ?? "", a.lastMessageId ?? "");
}

/** Oldest first. @param {Message} a @param {Message} b */
export function byOldest(a, b) {
  const t = Date.parse(a.timestamp) - Date.parse(b.timestamp);
  return t !== 0 ? t : compare(a.messageId, b.messageId);
}

/** Code-unit order, as the stores order ids (and far cheaper than localeCompare). @param {string} a @param {string} b */
function compare(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Whether two records are the same message. @param {Message} a @param {Message} b */
export function sameMessage(a, b) {
  return (
    a._id === b._id ||
    a.messageId === b.messageId ||
    (!!a.clientMessageId && a.clientMessageId === b.clientMessageId)
  );
}

/** One record of a message from two. @param {Message} old @param {Message} incoming @returns {Message} */
export function mergeMessage(old, incoming) {
  const status = laterStatus(old.status, incoming.status);
  return {
    ...old,
    ...incoming,
    _id: incoming._id && !incoming._id.startsWith("tmp:") ? incoming._id : old._id,
    messageId: betterId(old.messageId, incoming.messageId),
    status,
    errors: status === "failed" ? incoming.errors ?? old.errors : incoming.errors ?? null,
    localPreview: old.localPreview ?? incoming.localPreview,
    retry: status === "failed" ? incoming.retry ?? old.retry : undefined,
    retried: old.retried || incoming.retried,
  };
}

/**
 * `messages` (oldest first) with `incoming` added or merged in.
 * @param {Message[]} messages
 * @param {Message} incoming
 */
export function upsertMessage(messages, incoming) {
  // From the end: a message changing is nearly always a recent one.
  let index = -1;
  for (let i = messages.length - 1; i >= 0; i--) {
    if (sameMessage(messages[i], incoming)) {
      index = i;
      break;
    }
  }
  if (index >= 0) {
    const next = messages.slice();
    next[index] = mergeMessage(messages[index], incoming);
    return next;
  }
  // Usually the newest: found from the end.
  let at = messages.length;
  while (at > 0 && byOldest(messages[at - 1], incoming) > 0) at--;
  const next = messages.slice();
  next.splice(at, 0, incoming);
  return next;
}

/**
 * Several pages or a reload merged into what is shown.
 * @param {Message[]} messages
 * @param {Message[]} loaded
 */
export function mergeMessages(messages, loaded) {
  let next = messages;
  for (const m of loaded) next = upsertMessage(next, m);
  return next.slice().sort(byOldest);
}

/**
 * A status change applied to a conversation's messages.
 * @param {Message[]} messages
 * @param {StatusUpdate} update
 */
export function applyStatus(messages, update) {
  const ids = [update.messageId, update.previousMessageId, update.clientMessageId].filter(Boolean);
  const index = messages.findIndex(
    (m) => ids.includes(m.messageId) || ids.includes(m._id) || (!!m.clientMessageId && ids.includes(m.clientMessageId)),
  );
  if (index < 0) return messages;
  const old = messages[index];
  const status = laterStatus(old.status, update.status);
  const next = messages.slice();
  next[index] = {
    ...old,
    messageId: betterId(old.messageId, update.messageId),
    status,
    errors: status === "failed" ? update.errors ?? old.errors : old.errors,
  };
  return next;
}

/**
 * The list after a new message: its conversation moves up with the new
 * last message (once: the same message again changes nothing).
 * @param {Conversation[]} list newest first
 * @param {Message} m
 * @param {boolean} countUnread an inbound message the user is not looking at
 */
export function conversationsWithMessage(list, m, countUnread) {
  const index = list.findIndex((c) => c.conversationId === m.conversationId);
  const old = index >= 0 ? list[index] : undefined;
  if (old && (old.lastMessageId === m.messageId || old.lastMessageId === m._id)) return list;
  if (old && Date.parse(old.lastTimestamp) > Date.parse(m.timestamp)) {
    // Not the newest (WhatsApp's times are whole seconds): it still opens
    // the 24-hour window.
    const opened = windowAfter(old, m);
    return opened === old.windowExpiresAt
      ? list
      : list.map((c, i) => (i === index ? { ...c, windowExpiresAt: opened } : c));
  }
  /** @type {Conversation} */
  const updated = {
    ...(old ?? {
      conversationId: m.conversationId,
      userName: m.direction === "inbound" ? m.userName || "" : "",
      messageCount: 0,
      unreadCount: 0,
      participants: [],
      windowExpiresAt: null,
      ...(m.phoneNumberId ? { phoneNumberId: m.phoneNumberId, businessNumber: m.businessNumber ?? null } : {}),
    }),
    lastMessageId: m.messageId,
    lastMessageBody: m.body,
    lastTimestamp: m.timestamp,
    lastMessageStatus: m.status,
    lastMessageDirection: m.direction,
  };
  updated.messageCount = (old?.messageCount ?? 0) + 1;
  if (m.direction === "inbound") {
    if (m.userName && !m.userName.startsWith("+")) updated.userName = m.userName;
    if (countUnread) updated.unreadCount = (old?.unreadCount ?? 0) + 1;
    updated.windowExpiresAt = windowAfter(updated, m);
  }
  const rest = index >= 0 ? list.slice(0, index).concat(list.slice(index + 1)) : list;
  return [updated].concat(rest);
}

/**
 * When the 24-hour window closes after message `m`: a customer's message
 * opens it for 24 hours from its time (compared as times: the server's and
 * the browser's ISO strings differ in their fractions).
 * @param {Conversation} c
 * @param {Message} m
 * @returns {string | null | undefined}
 */
function windowAfter(c, m) {
  if (m.direction !== "inbound") return c.windowExpiresAt;
  const closes = Date.parse(m.timestamp) + 24 * 3600 * 1000;
  const now = c.windowExpiresAt ? Date.parse(c.windowExpiresAt) : Number.NaN;
  return Number.isNaN(now) || now < closes ? new Date(closes).toISOString() : c.windowExpiresAt;
}

/**
 * The list after a status change of a conversation's last message.
 * @param {Conversation[]} list
 * @param {StatusUpdate} update
 */
export function conversationsWithStatus(list, update) {
  const index = list.findIndex((c) => c.conversationId === update.conversationId);
  if (index < 0) return list;
  const c = list[index];
  const ids = [update.messageId, update.previousMessageId, update.clientMessageId];
  if (!c.lastMessageId || !ids.includes(c.lastMessageId)) return list;
  const next = list.slice();
  next[index] = {
    ...c,
    lastMessageId: betterId(c.lastMessageId, update.messageId),
    lastMessageStatus: laterStatus(c.lastMessageStatus, update.status),
  };
  return next;
}

/**
 * Reloaded or further pages merged into the list, newest first, one entry
 * per conversation (the newer summary wins).
 * @param {Conversation[]} list
 * @param {Conversation[]} loaded
 */
export function mergeConversations(list, loaded) {
  /** @type {Map<string, Conversation>} */
  const byId = new Map(list.map((c) => [c.conversationId, c]));
  for (const c of loaded) {
    const old = byId.get(c.conversationId);
    if (!old || Date.parse(c.lastTimestamp) >= Date.parse(old.lastTimestamp)) byId.set(c.conversationId, c);
  }
  return Array.from(byId.values()).sort(byNewest);
}

/** Whether the customer service window is open now. @param {Conversation | undefined} c */
export function windowOpen(c) {
  return !!c?.windowExpiresAt && Date.parse(c.windowExpiresAt) > Date.now();
}

/**
 * Whether a conversation or event belongs to the business number shown
 * (`""`: all of them). Records without a number (older servers, data from
 * before numbers) are shown: only a record of another number is left out.
 * @param {{phoneNumberId?: string}} item
 * @param {string} number
 */
export function ofNumber(item, number) {
  return !number || !item.phoneNumberId || item.phoneNumberId === number;
}
