// @ts-check
// Our own line icons (simple paths drawn for this project; no WhatsApp artwork).
import { html } from "./vendor/preact-htm-3.1.1.js";
import { statusLabel } from "./format.js";

/** @param {string} d @param {string} [cls] */
function icon(d, cls = "icon") {
  return html`<svg class=${cls} viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path d=${d} /></svg>`;
}

const ONE = "M4.5 12.5l4.2 4.2L19 6.4";
const TWO_A = "M1.8 12.8l4 4L15.6 7";
const TWO_B = "M9.3 15.1l1.7 1.7L20.8 7";

/**
 * The ticks of an outgoing message: a clock, one tick, two ticks, two blue
 * ticks, or a red mark.
 * @param {{status: string}} props
 */
export function Ticks({ status }) {
  const label = statusLabel(status);
  if (status === "pending") {
    return html`<span class="ticks pending" role="img" aria-label=${label} title=${label}>
      <svg class="tick" viewBox="0 0 24 24" aria-hidden="true"><circle cx="12" cy="12" r="7.5" /><path d="M12 7.5V12l3 2" /></svg>
    </span>`;
  }
  if (status === "failed") {
    return html`<span class="ticks failed" role="img" aria-label=${label}>
      <svg class="tick" viewBox="0 0 24 24" aria-hidden="true"><circle cx="12" cy="12" r="8.5" /><path d="M12 7.5v5.5M12 16v.5" /></svg>
    </span>`;
  }
  if (status === "sent") {
    return html`<span class="ticks sent" role="img" aria-label=${label} title=${label}>
      <svg class="tick" viewBox="0 0 24 24" aria-hidden="true"><path d=${ONE} /></svg>
    </span>`;
  }
  const read = status === "read" || status === "played";
  return html`<span class=${`ticks ${read ? "read" : "delivered"}`} role="img" aria-label=${label} title=${label}>
    <svg class="tick" viewBox="0 0 24 24" aria-hidden="true"><path d=${TWO_A} /><path d=${TWO_B} /></svg>
  </span>`;
}

export const SendIcon = () => icon("M3.4 20.4l17.5-7.5a1 1 0 000-1.8L3.4 3.6a.5.5 0 00-.7.6L5 11l9 1-9 1-2.3 6.8a.5.5 0 00.7.6z", "icon fill");
export const AttachIcon = () => icon("M16.5 6.5l-7.8 7.8a2 2 0 002.8 2.8l8-8a4 4 0 00-5.6-5.6l-8.2 8.2a6 6 0 008.5 8.5l7-7");
export const NewChatIcon = () => icon("M20 11.5a8 8 0 01-11.6 7.1L4 20l1.4-4.2A8 8 0 1120 11.5zM12 8v7M8.5 11.5h7");
export const BackIcon = () => icon("M20 12H5m6-7l-7 7 7 7");
export const SearchIcon = () => icon("M10.5 17a6.5 6.5 0 110-13 6.5 6.5 0 010 13zm5-1.5L21 21");
export const CloseIcon = () => icon("M6 6l12 12M18 6L6 18");
export const TemplateIcon = () => icon("M5 4h14v16H5zM8 8h8M8 12h8M8 16h5");
export const PinIcon = () => icon("M12 21s-6.5-6.2-6.5-11a6.5 6.5 0 0113 0c0 4.8-6.5 11-6.5 11zm0-8.5a2.5 2.5 0 100-5 2.5 2.5 0 000 5z");
export const PersonIcon = () => icon("M12 12a4 4 0 100-8 4 4 0 000 8zm-7 8a7 7 0 0114 0");
export const FileIcon = () => icon("M6 2.5h8l4.5 4.5v14.5H6zM14 2.5V7h4.5");
export const ChatIcon = () =>
  html`<svg class="brand" viewBox="0 0 64 64" aria-hidden="true"><path d="M32 6C17.6 6 6 16.8 6 30.2c0 6 2.4 11.5 6.3 15.7L10 58l12.8-5.7c2.9 1 6 1.6 9.2 1.6 14.4 0 26-10.8 26-24.2S46.4 6 32 6z" /><path class="brand-lines" d="M20 25h24M20 33h16" /></svg>`;
