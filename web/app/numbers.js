// @ts-check
// Several business numbers in one inbox: the switcher that narrows the list
// to one of them, and the "new chat" form that asks which number to start
// a chat from.
import { html, useEffect, useRef, useState } from "./vendor/preact-htm-3.1.1.js";
import { numberLabel } from "./format.js";
import { BackIcon } from "./icons.js";
import { useTemplateFields } from "./composer.js";

/** @typedef {import("./types.js").BusinessNumber} BusinessNumber */
/** @typedef {import("./composer.js").Template} Template */

/**
 * "All numbers" and each number, as filter chips (a radio group: arrow keys
 * move between them), each with its unread count.
 * @param {{numbers: BusinessNumber[], selected: string, onChoose: (id: string) => void}} props
 */
export function NumberSwitcher({ numbers, selected, onChoose }) {
  const total = numbers.reduce((n, x) => n + Math.max(0, x.unreadCount), 0);
  const choices = [{ id: "", label: "All numbers", unread: total }].concat(
    numbers.map((n) => ({ id: n.phoneNumberId, label: numberLabel(n), unread: Math.max(0, n.unreadCount) })),
  );
  return html`<div class="numbers" role="radiogroup" aria-label="Business number">
    ${choices.map((c) => {
      const countId = `unread-number-${c.id || "all"}`;
      return html`<label class=${`chip${c.id === selected ? " checked" : ""}`} key=${c.id || "all"}>
        <input
          type="radio"
          name="business-number"
          value=${c.id}
          checked=${c.id === selected}
          aria-label=${c.label}
          aria-describedby=${c.unread > 0 ? countId : undefined}
          data-phone-number-id=${c.id}
          onChange=${() => onChoose(c.id)}
        />
        <span class="chip-label">${c.label}</span>
        ${c.unread > 0 ? html`<span class="chip-count" id=${countId} aria-label=${`${c.unread} unread`}>${c.unread}</span>` : null}
      </label>`;
    })}
  </div>`;
}

/**
 * What starting a chat sends: `POST /api/messages` with `to`, the number to
 * send from (none: the server's default) and a template (the only kind of
 * message WhatsApp delivers to someone who has not written first).
 * @typedef {object} NewChatRequest
 * @property {string} to the customer's WhatsApp id (digits)
 * @property {string} [phoneNumberId]
 * @property {Template} template
 */

/**
 * The "New chat" drawer over the list: the customer's number, the business
 * number to write from (with two or more), a template.
 * @param {{
 *   numbers: BusinessNumber[],
 *   selected: string,
 *   onStart: (r: NewChatRequest) => Promise<void>,
 *   onClose: () => void,
 * }} props
 */
export function NewChat({ numbers, selected, onStart, onClose }) {
  const several = numbers.length >= 2;
  const [from, setFrom] = useState(selected || numbers[0]?.phoneNumberId || "");
  const [to, setTo] = useState("");
  const { template, fields } = useTemplateFields();
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  /** @type {{current: HTMLInputElement | null}} */
  const first = useRef(null);
  useEffect(() => first.current?.focus(), []);

  /** @param {Event} e */
  const submit = async (e) => {
    e.preventDefault();
    const digits = to.replace(/[^0-9]/g, "");
    if (digits.length < 6) {
      setError("Enter the customer's phone number with its country code.");
      return;
    }
    const chosen = template();
    if (!chosen || busy) return;
    setError("");
    setBusy(true);
    try {
      await onStart({
        to: digits,
        ...(several && from ? { phoneNumberId: from } : {}),
        template: chosen,
      });
    } catch (failure) {
      setError(failure instanceof Error ? failure.message : String(failure));
    } finally {
      setBusy(false);
    }
  };

  return html`<section class="drawer" aria-label="New chat">
    <header class="drawer-header">
      <button type="button" class="icon-button" aria-label="Close new chat" onClick=${onClose}><${BackIcon} /></button>
      <h2>New chat</h2>
    </header>
    <form class="template-form new-chat" aria-label="Start a chat" onSubmit=${submit}>
      <p class="drawer-hint">WhatsApp only delivers a template to a customer who has not written in the last 24 hours.</p>
      <label>Phone number
        <input ref=${first} type="tel" name="to" autocomplete="off" placeholder="+44 7700 900123" required value=${to}
          onInput=${(/** @type {any} */ e) => setTo(e.currentTarget.value)} />
      </label>
      ${several
        ? html`<label>From business number
            <select name="from" value=${from} onChange=${(/** @type {any} */ e) => setFrom(e.currentTarget.value)}>
              ${numbers.map((n) => html`<option value=${n.phoneNumberId} key=${n.phoneNumberId}>${numberLabel(n)}</option>`)}
            </select>
          </label>`
        : null}
      ${fields}
      ${error ? html`<p class="form-error" role="alert">${error}</p>` : null}
      <button type="submit" class="primary" disabled=${busy}>Start chat</button>
    </form>
  </section>`;
}
