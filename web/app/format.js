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

/** Country calling codes of two digits (the rest, bar 1 and 7, have three). */
const TWO_DIGIT_CODES = new Set(
  "20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 60 61 62 63 64 65 66 81 82 84 86 90 91 92 93 94 95 98".split(" "),
);

/**
 * A phone number as people write it: "+1 555 078 3881", "+44 7700 900123".
 * The grouping after the country code is a readable guess, not a national
 * format; something that is not a number is returned as it is.
 * @param {string} number digits, with or without "+" and separators
 */
export function formatPhone(number) {
  const digits = number.replace(/[^0-9]/g, "");
  if (digits.length < 7 || !/^[+\d\s().-]+$/.test(number.trim())) return number;
  if (digits.length === 11 && digits.startsWith("1")) {
    return `+1 ${digits.slice(1, 4)} ${digits.slice(4, 7)} ${digits.slice(7)}`;
  }
  const codeLength = /^[17]/.test(digits) ? 1 : TWO_DIGIT_CODES.has(digits.slice(0, 2)) ? 2 : 3;
  const rest = digits.slice(codeLength);
  // Groups of three; a digit left over makes the last group four, two the first.
  const groups = [];
  let at = rest.length % 3 === 2 && rest.length > 5 ? 4 : rest.length % 3 === 2 ? 2 : 0;
  if (at) groups.push(rest.slice(0, at));
  while (at < rest.length) {
    const size = rest.length - at === 4 ? 4 : 3;
    groups.push(rest.slice(at, at + size));
    at += size;
  }
  return `+${digits.slice(0, codeLength)} ${groups.join(" ")}`;
}

/**
 * How a business number is shown: its display number formatted, else its id.
 * @param {{phoneNumberId: string, businessNumber?: string | null}} n
 */
export function numberLabel(n) {
  return n.businessNumber ? formatPhone(n.businessNumber) : n.phoneNumberId;
}
