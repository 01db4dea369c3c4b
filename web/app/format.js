// @ts-check
// Times, names and initials as WhatsApp Web shows them.

const DAY = 24 * 60 * 60 * 1000;

/** @param {Date} d */
function startOfDay(d) {
  return new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
}

/** One formatter for every bubble: `toLocaleTimeString` with options builds a new one per call. */
const CLOCK = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });
const WEEKDAY = new Intl.DateTimeFormat([], { weekday: "long" });
const DATE = new Intl.DateTimeFormat([], { day: "2-digit", month: "2-digit", year: "numeric" });
const LONG_DATE = new Intl.DateTimeFormat([], { day: "numeric", month: "long", year: "numeric" });

/** @param {string} iso @returns {string} "14:05" */
export function clock(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  return CLOCK.format(d);
}

/**
 * The list's time: a time today, "Yesterday", a weekday within the week,
 * a date before that.
 * @param {string} iso
 * @param {Date} [now]
 */
export function listTime(iso, now = new Date()) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const days = Math.round((startOfDay(now) - startOfDay(d)) / DAY);
  if (days <= 0) return clock(iso);
  if (days === 1) return "Yesterday";
  if (days < 7) return WEEKDAY.format(d);
  return DATE.format(d);
}

/**
 * A chat's day separator: "Today", "Yesterday", a weekday, a date.
 * @param {string} iso
 * @param {Date} [now]
 */
export function dayLabel(iso, now = new Date()) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const days = Math.round((startOfDay(now) - startOfDay(d)) / DAY);
  if (days <= 0) return "Today";
  if (days === 1) return "Yesterday";
  if (days < 7) return WEEKDAY.format(d);
  return LONG_DATE.format(d);
}

/** @param {string} iso */
export function dayKey(iso) {
  const d = new Date(iso);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

/** The customer's number, `+<digits>`, from a conversation id. @param {string} conversationId */
export function phoneOf(conversationId) {
  const digits = conversationId.replace(/^conv_/, "").split(/[^0-9]/)[0];
  return digits ? `+${digits}` : conversationId;
}

/** Up to two initials; "#" for a bare number. @param {string} name */
export function initials(name) {
  const words = name.replace(/[^\p{L}\p{N}\s]/gu, " ").trim().split(/\s+/).filter(Boolean);
  if (words.length === 0 || /^\+?\d/.test(name.trim())) return "#";
  const letters = words.length === 1 ? [words[0]] : [words[0], words[words.length - 1]];
  return letters.map((w) => Array.from(w)[0].toUpperCase()).join("");
}

/** A stable colour for an avatar, from a palette of muted tones. @param {string} key */
export function avatarHue(key) {
  let hash = 0;
  for (const ch of key) hash = (hash * 31 + (ch.codePointAt(0) ?? 0)) >>> 0;
  return hash % 8;
}

/** A WhatsApp error as one line. @param {import("./types.js").MessageError[] | null | undefined} errors */
export function errorText(errors) {
  if (!errors || errors.length === 0) return "Not sent";
  return errors
    .map((e) => {
      const title = e.title || e.message || "Not sent";
      const details = e.error_data?.details || (e.message && e.message !== title ? e.message : "");
      return `${title}${e.code ? ` (${e.code})` : ""}${details ? `: ${details}` : ""}`;
    })
    .join("; ");
}

/** The readable status of an outgoing message. @param {string} status */
export function statusLabel(status) {
  switch (status) {
    case "pending":
      return "Pending";
    case "sent":
      return "Sent";
    case "delivered":
      return "Delivered";
    case "read":
    case "played":
      return "Read";
    case "failed":
      return "Failed";
    default:
      return status;
  }
}
