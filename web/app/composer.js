// @ts-check
// The composer: Enter sends, Shift+Enter starts a new line, a file can be
// attached; with the 24-hour window closed it says so and offers a template.
import { html, useEffect, useRef, useState } from "./vendor/preact-htm-3.1.1.js";
import { AttachIcon, CloseIcon, SendIcon, TemplateIcon } from "./icons.js";

/**
 * @typedef {object} Template
 * @property {string} name
 * @property {string} language
 * @property {string[]} parameters
 */

/**
 * The `template` of a send (`POST /api/messages`), body parameters in order.
 * @param {Template} t
 * @returns {Record<string, unknown>}
 */
export function templateBody(t) {
  /** @type {Record<string, unknown>} */
  const template = { name: t.name, language: { code: t.language } };
  if (t.parameters.length) {
    template.components = [{ type: "body", parameters: t.parameters.map((text) => ({ type: "text", text })) }];
  }
  return template;
}

/**
 * A template's fields (name, language, parameters one per line), for the
 * forms that send one: `fields` to render, `template()` what they hold
 * (null without a name).
 */
export function useTemplateFields() {
  const [name, setName] = useState("hello_world");
  const [language, setLanguage] = useState("en_US");
  const [parameters, setParameters] = useState("");
  return {
    /** @returns {Template | null} */
    template: () =>
      name.trim()
        ? {
            name: name.trim(),
            language: language.trim() || "en_US",
            parameters: parameters.split("\n").map((p) => p.trim()).filter(Boolean),
          }
        : null,
    fields: html`<label>Template name
        <input name="template" required value=${name} onInput=${(/** @type {any} */ e) => setName(e.currentTarget.value)} />
      </label>
      <label>Language
        <input name="language" value=${language} onInput=${(/** @type {any} */ e) => setLanguage(e.currentTarget.value)} />
      </label>
      <label>Parameters (one per line)
        <textarea name="parameters" rows="2" value=${parameters} onInput=${(/** @type {any} */ e) => setParameters(e.currentTarget.value)}></textarea>
      </label>`,
  };
}

/** @param {{onSend: (t: Template) => void, onClose: () => void}} props */
function TemplateForm({ onSend, onClose }) {
  const { template, fields } = useTemplateFields();
  return html`<form
    class="template-form"
    aria-label="Template"
    onSubmit=${(/** @type {Event} */ e) => {
      e.preventDefault();
      const t = template();
      if (t) onSend(t);
    }}
  >
    <div class="template-head">
      <strong>Send a template</strong>
      <button type="button" class="icon-button" aria-label="Close template" onClick=${onClose}><${CloseIcon} /></button>
    </div>
    ${fields}
    <button type="submit" class="primary">Send template</button>
  </form>`;
}

/**
 * @param {{
 *   conversationId: string,
 *   focus: boolean,
 *   windowOpen: boolean,
 *   onText: (text: string) => void,
 *   onFile: (file: File, caption: string) => void,
 *   onTemplate: (t: Template) => void,
 * }} props
 */
export function Composer({ conversationId, focus, windowOpen, onText, onFile, onTemplate }) {
  const [text, setText] = useState("");
  const [templateOpen, setTemplateOpen] = useState(false);
  /** @type {{current: HTMLTextAreaElement | null}} */
  const box = useRef(null);
  /** @type {{current: HTMLInputElement | null}} */
  const file = useRef(null);

  useEffect(() => {
    setText("");
    setTemplateOpen(false);
    if (focus) box.current?.focus();
  }, [conversationId]);

  useEffect(() => {
    // Grows with its text, up to a few lines (style.css caps the height).
    const el = box.current;
    if (!el) return;
    el.style.height = "auto";
    el.style.height = `${el.scrollHeight}px`;
  }, [text]);

  const send = () => {
    const value = text.trim();
    if (!value) return;
    onText(value);
    setText("");
  };

  return html`<div class="composer-area">
    ${windowOpen
      ? null
      : html`<div class="window-closed" role="note">
          <span>The 24-hour window is closed: the customer has not written in the last 24 hours, so WhatsApp only delivers a template.</span>
          <button type="button" class="link-button" onClick=${() => setTemplateOpen(true)}><${TemplateIcon} /> Use a template</button>
        </div>`}
    ${templateOpen
      ? html`<${TemplateForm}
          onClose=${() => setTemplateOpen(false)}
          onSend=${(/** @type {Template} */ t) => {
            setTemplateOpen(false);
            onTemplate(t);
          }}
        />`
      : null}
    <form
      class="composer"
      onSubmit=${(/** @type {Event} */ e) => {
        e.preventDefault();
        send();
      }}
    >
      <button type="button" class="icon-button" aria-label="Attach" onClick=${() => file.current?.click()}><${AttachIcon} /></button>
      <input
        type="file"
        ref=${file}
        hidden
        aria-label="File"
        accept="image/*,video/*,audio/*,application/pdf,application/*,text/plain"
        onChange=${(/** @type {any} */ e) => {
          const chosen = e.currentTarget.files?.[0];
          e.currentTarget.value = "";
          if (chosen) {
            onFile(chosen, text.trim());
            setText("");
          }
        }}
      />
      <textarea
        ref=${box}
        rows="1"
        aria-label="Message"
        placeholder="Type a message"
        value=${text}
        onInput=${(/** @type {any} */ e) => setText(e.currentTarget.value)}
        onKeyDown=${(/** @type {KeyboardEvent} */ e) => {
          if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
            e.preventDefault();
            send();
          }
        }}
      ></textarea>
      <button type="submit" class="icon-button send" aria-label="Send"><${SendIcon} /></button>
    </form>
  </div>`;
}
