// The web inbox in a real headless Chromium (Debian's `chromium`, driven by
// puppeteer-core), against the real `whatsapp-clone` binary. Run by
// services/whatsapp-clone/tests/inbox.rs (so by `cargo test` and
// scripts/test.sh), which starts the fake Graph API and passes:
//   WHATSAPP_CLONE_BIN   the binary
//   WHATSAPP_ACCESS_TOKEN, WHATSAPP_PHONE_NUMBER_ID, GRAPH_API_URL, GRAPH_API_VERSION
//                        the fake Graph API (its first sends: accept, then 131047)
//   INBOX_IMAGE_MEDIA_ID an image the fake Graph API holds
//   CHROMIUM_BIN         (optional) the browser, default /usr/bin/chromium
// The page is driven by its accessible names (shared/CONTRACT.md "The web inbox").
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "../..");
const BIN = process.env.WHATSAPP_CLONE_BIN || path.join(ROOT, "target/debug/whatsapp-clone");
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const IMAGE_ID = process.env.INBOX_IMAGE_MEDIA_ID || "";
const TMP = fs.mkdtempSync(path.join(process.env.TMPDIR || os.tmpdir(), "inbox-test-"));

const LIST = '::-p-aria([name="Conversations"][role="listbox"])';
const LOG = '::-p-aria([name="Messages"][role="log"])';
const BOX = '::-p-aria([name="Message"][role="textbox"])';
const SEND = '::-p-aria([name="Send"][role="button"])';
const STATUS = '::-p-aria([name="Connection"][role="status"])';
const SEARCH = '::-p-aria([name="Search"])';
const SWITCHER = '::-p-aria([name="Business number"][role="radiogroup"])';

const ADA = "447700900123";
const BOB = "447700900456";

/** @returns {Promise<number>} */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = /** @type {net.AddressInfo} */ (s.address());
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The all-in-one binary on a port and data dir of its own. */
class Server {
  constructor(name, env = {}) {
    this.dir = path.join(TMP, name);
    this.env = env;
    this.child = null;
  }
  async start(port) {
    this.port = port ?? this.port ?? (await freePort());
    this.url = `http://127.0.0.1:${this.port}`;
    this.child = spawn(BIN, ["serve", "--port", String(this.port), "--data-dir", this.dir], {
      env: { ...process.env, HOST: "127.0.0.1", RUST_LOG: "warn", ...this.env },
      stdio: ["ignore", "ignore", "inherit"],
    });
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        const r = await fetch(`${this.url}/readyz`);
        if (r.ok) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`${BIN} not ready on ${this.port}`);
      if (this.child.exitCode !== null) throw new Error(`${BIN} exited with ${this.child.exitCode}`);
      await sleep(100);
    }
  }
  async kill() {
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGKILL");
    await exited;
  }
  async api(pathname, init = {}) {
    const r = await fetch(this.url + pathname, init);
    assert.ok(r.ok, `${pathname}: ${r.status} ${await r.clone().text()}`);
    return r.json();
  }
  async webhook(value) {
    const body = { object: "whatsapp_business_account", entry: [{ id: "1", changes: [{ field: "messages", value }] }] };
    const r = await fetch(`${this.url}/webhook`, { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
    assert.equal(r.status, 200, await r.text());
  }
}

const metadata = { display_phone_number: "15550001111", phone_number_id: process.env.WHATSAPP_PHONE_NUMBER_ID || "106540352242922" };
/** The business number the sample files (webhook_files/) were written for. */
const SAMPLE_NUMBER = "629305560276479";

/**
 * The sample files as if written to our number (the fake Graph API's): the
 * main server is a single-number deployment, whose inbox looks as before
 * numbers existed (ids `conv_<wa_id>`, no switcher) and sends through the
 * one number the fake Graph API serves.
 */
function samplesForOurNumber() {
  const dir = path.join(TMP, "webhook_files");
  fs.mkdirSync(dir, { recursive: true });
  for (const name of fs.readdirSync(path.join(ROOT, "webhook_files"))) {
    const text = fs.readFileSync(path.join(ROOT, "webhook_files", name), "utf8");
    fs.writeFileSync(path.join(dir, name), text.replaceAll(SAMPLE_NUMBER, metadata.phone_number_id));
  }
  return dir;
}
let seq = 0;
const now = () => String(Math.floor(Date.now() / 1000));
/** An inbound text from `waId` (now: the 24-hour window is open). */
function inbound(waId, name, message) {
  return {
    messaging_product: "whatsapp",
    metadata,
    contacts: [{ profile: { name }, wa_id: waId }],
    messages: [{ from: waId, id: `wamid.inboxtest.${Date.now()}.${seq++}`, timestamp: now(), type: "text", text: { body: message } }],
  };
}

let server;
let browser;
/** Console errors and page errors, per page. */
const errors = [];

async function newPage(width = 1280, height = 800) {
  const page = await browser.newPage();
  await page.setViewport({ width, height });
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`${m.text()} ${m.location()?.url ?? ""}`);
  });
  page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
  return page;
}

/** Texts of the rendered list rows: [{pos, name, preview, time, badge, selected}]. */
function rows(page) {
  return page.$$eval('[role="option"]', (els) =>
    els.map((el) => ({
      pos: Number(el.getAttribute("aria-posinset")),
      id: el.getAttribute("data-conversation-id"),
      name: el.querySelector(".row-name")?.textContent?.trim(),
      preview: el.querySelector(".preview-text")?.textContent?.trim(),
      time: el.querySelector(".row-time")?.textContent?.trim(),
      badge: el.querySelector(".badge")?.textContent?.trim() ?? "",
      ticks: el.querySelector(".row-preview .ticks")?.getAttribute("aria-label") ?? "",
      selected: el.getAttribute("aria-selected"),
    })),
  );
}

async function open(page, conversationId) {
  await page.waitForSelector(`[role="option"][data-conversation-id="${conversationId}"]`, { timeout: 10_000 });
  await page.click(`[role="option"][data-conversation-id="${conversationId}"]`);
  await page.waitForSelector(`${LOG}`);
  await page.waitForFunction(
    (id) => document.querySelector(`[role="option"][data-conversation-id="${id}"]`)?.getAttribute("aria-selected") === "true",
    {},
    conversationId,
  );
}

/** Elements of the open chat whose text has `text`. */
function bubblesWith(page, text) {
  return page.$$eval("[data-message-id]", (els, t) => els.filter((e) => e.textContent.includes(t)).map((e) => ({ id: e.getAttribute("data-message-id"), status: e.getAttribute("data-status") })), text);
}

async function waitBubble(page, text, status, timeout = 10_000) {
  await page.waitForFunction(
    (t, s) => [...document.querySelectorAll("[data-message-id]")].some((e) => e.textContent.includes(t) && (!s || e.getAttribute("data-status") === s)),
    { timeout },
    text,
    status,
  );
}

before(async () => {
  assert.ok(fs.existsSync(BIN), `no binary at ${BIN} (cargo build --bin whatsapp-clone)`);
  assert.ok(fs.existsSync(CHROMIUM), `no browser at ${CHROMIUM} (apt-get install chromium; scripts/test.sh does)`);
  server = new Server("main");
  await server.start();
  execFileSync(BIN, ["import", samplesForOurNumber(), "--url", `${server.url}/webhook`], { stdio: "ignore" });
  const expected = JSON.parse(fs.readFileSync(path.join(ROOT, "webhook_files/EXPECTED.json"), "utf8")).flatMap((f) => f.messages ?? []).length;
  const deadline = Date.now() + 60_000;
  while ((await server.api("/api/stats")).totalMessages < expected) {
    assert.ok(Date.now() < deadline, "the sample files were not all stored within 60 s");
    await sleep(200);
  }
  // Two customers who wrote just now: their 24-hour windows are open.
  await server.webhook(inbound(ADA, "Ada Lovelace", "Hi, is my order on its way?"));
  await server.webhook(inbound(BOB, "Bob Marley", "Hello there"));
  await waitFor(async () => (await server.api("/api/conversations")).some((c) => c.conversationId === `conv_${BOB}`));
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    userDataDir: path.join(TMP, "chromium-profile"),
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-dev-shm-usage",
    ],
  });
});

after(async () => {
  await browser?.close();
  await server?.kill();
  fs.rmSync(TMP, { recursive: true, force: true });
});

async function waitFor(condition, timeout = 10_000, what = "condition") {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

let page;

test("the page is served with a strict CSP, gzip and an ETag", async () => {
  const r = await fetch(`${server.url}/`, { headers: { "Accept-Encoding": "gzip" } });
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-security-policy") ?? "", /script-src 'self';/);
  assert.ok(r.headers.get("etag"));
  const again = await fetch(`${server.url}/`, { headers: { "If-None-Match": r.headers.get("etag") } });
  assert.equal(again.status, 304);
  const html = await r.text();
  assert.doesNotMatch(html.replace(/<script type="module" src="[^"]+"><\/script>/g, ""), /<script/);
});

test("the list matches GET /api/conversations, newest first", async () => {
  page = await newPage();
  await page.goto(server.url);
  await page.waitForSelector(LIST);
  await page.waitForFunction((s) => document.querySelectorAll('[role="option"]').length > 5, {});
  const api = await server.api("/api/conversations");
  const shown = await rows(page);
  assert.ok(shown.length >= Math.min(api.length, 8), `rendered ${shown.length} of ${api.length}`);
  for (const row of shown) {
    const c = api[row.pos - 1];
    assert.equal(row.id, c.conversationId, `row ${row.pos}`);
    const name = c.userName && c.userName !== "Business" ? c.userName : `+${c.conversationId.slice(5)}`;
    assert.equal(row.name, name);
    assert.equal(row.preview, c.lastMessageBody);
    assert.equal(row.badge, c.unreadCount > 0 ? String(c.unreadCount) : "");
    assert.ok(row.time, "a time, a day or a date");
    if (c.lastMessageDirection === "outbound") assert.ok(row.ticks, `ticks on ${c.conversationId}`);
  }
  assert.equal(shown[0].id, `conv_${BOB}`);
  // One business number: no number switcher (the inbox looks as it did before numbers).
  assert.equal(await page.$(SWITCHER), null);
  await page.waitForFunction((sel) => document.querySelector('[role="status"]')?.textContent === "online", {});
  assert.equal(await page.$eval(STATUS, (e) => e.textContent), "online");
});

test("opening a conversation shows its messages and marks it read", async () => {
  const api = await server.api("/api/conversations");
  // The sample conversation with the most messages.
  const c = api.filter((x) => !x.conversationId.includes(ADA) && !x.conversationId.includes(BOB)).sort((a, b) => b.messageCount - a.messageCount)[0];
  await open(page, c.conversationId);
  const messages = await server.api(`/api/conversations/${c.conversationId}/messages`);
  const ids = new Set(messages.map((m) => m.messageId));
  const expected = messages.filter((m) => !(m.type === "reaction" && ids.has(m.content?.message_id))).map((m) => m.messageId);
  await page.waitForFunction((n) => document.querySelectorAll("[data-message-id]").length >= n, {}, expected.length);
  const shown = await page.$$eval("[data-message-id]", (els) => els.map((e) => e.getAttribute("data-message-id")));
  assert.deepEqual(shown.sort(), expected.sort());
  const outgoing = messages.filter((m) => m.direction === "outbound");
  for (const m of outgoing) {
    assert.equal(await page.$eval(`[data-message-id="${m.messageId}"]`, (e) => e.getAttribute("data-status")), m.status);
  }
  await waitFor(async () => (await server.api("/api/conversations")).find((x) => x.conversationId === c.conversationId).unreadCount === 0, 5000, "unreadCount 0");
  // Esc closes the chat.
  await page.keyboard.press("Escape");
  await page.waitForFunction(() => !document.querySelector('[role="log"]'));
});

test("sending shows a pending, then a sent bubble that is still there after a reload", async () => {
  await open(page, `conv_${ADA}`);
  await page.evaluate(() => {
    // Every status the new bubble goes through.
    window.__seen = [];
    new MutationObserver(() => {
      for (const e of document.querySelectorAll("[data-status]")) {
        if (e.textContent.includes("Your order left today")) {
          const s = e.getAttribute("data-status");
          if (window.__seen[window.__seen.length - 1] !== s) window.__seen.push(s);
        }
      }
    }).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ["data-status"] });
  });
  await page.type(BOX, "Your order left today");
  await page.keyboard.press("Enter");
  await waitBubble(page, "Your order left today", "sent");
  const seen = await page.evaluate(() => window.__seen);
  assert.equal(seen[0], "pending", `statuses seen: ${seen}`);
  assert.ok(seen.includes("sent"));
  const [bubble] = await bubblesWith(page, "Your order left today");
  assert.match(bubble.id, /^wamid\./, "the pending message got WhatsApp's id");
  assert.equal(await page.$eval(BOX, (e) => e.value), "", "the composer is empty again");
  // Shift+Enter is a new line, not a send.
  await page.type(BOX, "line one");
  await page.keyboard.down("Shift");
  await page.keyboard.press("Enter");
  await page.keyboard.up("Shift");
  assert.equal(await page.$eval(BOX, (e) => e.value), "line one\n");
  await page.$eval(BOX, (e) => {
    e.value = "";
    e.dispatchEvent(new Event("input", { bubbles: true }));
  });

  await page.reload();
  await open(page, `conv_${ADA}`);
  await waitBubble(page, "Your order left today", "sent");
  assert.equal((await bubblesWith(page, "Your order left today")).length, 1);
});

test("a webhook posted while the page is open shows at once, in the list and the open chat", async () => {
  // WhatsApp's timestamps are whole seconds: a second after our reply, so
  // that this message is the conversation's newest for the server too.
  await sleep(1000);
  await server.webhook(inbound(ADA, "Ada Lovelace", "Thanks, got the tracking number"));
  await waitBubble(page, "Thanks, got the tracking number");
  await waitFor(async () => (await rows(page))[0]?.preview === "Thanks, got the tracking number", 5000, "Ada's row to show the new message");
  // Another customer: to the top of the list, with an unread badge.
  await server.webhook(inbound(BOB, "Bob Marley", "Are you open on Sunday?"));
  await waitFor(async () => {
    const [first] = await rows(page);
    return first?.id === `conv_${BOB}` && first.preview === "Are you open on Sunday?" && first.badge === "2";
  }, 5000, "Bob's row at the top with 2 unread");
  assert.equal((await bubblesWith(page, "Are you open on Sunday?")).length, 0, "not in Ada's chat");
});

test("a status webhook turns the ticks blue", async () => {
  const [bubble] = await bubblesWith(page, "Your order left today");
  await server.webhook({
    messaging_product: "whatsapp",
    metadata,
    statuses: [{ id: bubble.id, status: "read", timestamp: now(), recipient_id: ADA }],
  });
  await waitBubble(page, "Your order left today", "read");
  const colour = await page.$eval(`[data-message-id="${bubble.id}"] .ticks`, (e) => getComputedStyle(e).color);
  assert.equal(colour, "rgb(83, 189, 235)");
});

test("a send WhatsApp refuses (131047) stays, failed, with its error and Retry", async () => {
  await page.type(BOX, "This one will fail");
  await page.click(SEND);
  await waitBubble(page, "This one will fail", "failed");
  const tip = await page.$eval('[data-status="failed"] [role="tooltip"]', (e) => e.textContent);
  assert.match(tip, /131047/);
  // Shown on hover.
  await page.hover('[data-status="failed"] .bubble');
  assert.equal(await page.$eval('[data-status="failed"] [role="tooltip"]', (e) => getComputedStyle(e).display), "block");
  assert.ok(await page.$('[data-status="failed"] ::-p-aria([name="Retry"][role="button"])'));
});

test("a closed 24-hour window offers a template, which is sent", async () => {
  const api = await server.api("/api/conversations");
  const old = api.find((c) => !c.windowExpiresAt || Date.parse(c.windowExpiresAt) < Date.now());
  assert.ok(old, "a sample conversation with a closed window");
  await open(page, old.conversationId);
  await page.waitForSelector("::-p-text(The 24-hour window is closed)");
  await page.click("::-p-aria([name=\"Use a template\"][role=\"button\"])");
  await page.waitForSelector('::-p-aria([name="Template"][role="form"])');
  await page.click('::-p-aria([name="Template name"])', { count: 3 });
  await page.type('::-p-aria([name="Template name"])', "order_update");
  await page.type('::-p-aria([name="Parameters (one per line)"])', "A-1042");
  await page.click('::-p-aria([name="Send template"][role="button"])');
  await waitBubble(page, "order_update", "sent");
  // The customer answers (in whole seconds, so a moment "before" the
  // template): the window opens and the notice goes, without a reload.
  const waId = old.conversationId.replace("conv_", "");
  await server.webhook(inbound(waId, old.userName, "Yes please, send it"));
  await waitBubble(page, "Yes please, send it");
  await page.waitForFunction(() => !document.body.innerText.includes("The 24-hour window is closed"), { timeout: 5000 });
});

test("an image message shows the image", { skip: !IMAGE_ID && "no INBOX_IMAGE_MEDIA_ID" }, async () => {
  await open(page, `conv_${ADA}`);
  const value = inbound(ADA, "Ada Lovelace", "");
  value.messages[0].type = "image";
  delete value.messages[0].text;
  value.messages[0].image = { id: IMAGE_ID, mime_type: "image/png", sha256: "x", caption: "The parcel" };
  await server.webhook(value);
  await waitBubble(page, "The parcel");
  await page.waitForFunction(() => [...document.querySelectorAll("[data-message-id] img")].some((i) => i.complete && i.naturalWidth > 0), { timeout: 10_000 });
});

test("keyboard: arrow keys move through the list", async () => {
  await page.focus(LIST);
  const before = (await rows(page)).find((r) => r.selected === "true");
  await page.keyboard.press("ArrowDown");
  await page.waitForFunction((id) => {
    const sel = document.querySelector('[role="option"][aria-selected="true"]');
    return sel && sel.getAttribute("data-conversation-id") !== id;
  }, {}, before?.id ?? "");
  await page.keyboard.press("ArrowUp");
  await page.waitForFunction((id) => document.querySelector('[role="option"][aria-selected="true"]')?.getAttribute("data-conversation-id") === id, {}, before?.id);
});

test("search filters by name and number", async () => {
  await page.type(SEARCH, "Ada");
  await waitFor(async () => (await rows(page)).every((r) => r.name.includes("Ada")) && (await rows(page)).length === 1, 5000, "only Ada");
  await page.$eval(SEARCH, (e) => {
    e.value = "";
    e.dispatchEvent(new Event("input", { bubbles: true }));
  });
  await page.type(SEARCH, BOB.slice(-6));
  await waitFor(async () => (await rows(page)).length === 1 && (await rows(page))[0].id === `conv_${BOB}`, 5000, "only Bob");
  await page.$eval(SEARCH, (e) => {
    e.value = "";
    e.dispatchEvent(new Event("input", { bubbles: true }));
  });
});

test("search shows message hits with their words marked; a hit opens its chat at that message", async () => {
  await page.click(`${SEARCH}`);
  await page.type(SEARCH, "tracking num");
  const HIT = '::-p-aria([name="Messages found"]) button';
  await page.waitForSelector(HIT, { timeout: 5000 });
  const marked = await page.$$eval('[aria-label="Messages found"] mark', (ms) => ms.map((m) => m.textContent));
  assert.deepEqual(marked, ["tracking", "number"]);
  await page.click(HIT);
  await page.waitForSelector(`${LOG} [aria-current="true"]`, { timeout: 5000 });
  const found = await page.$eval('[role="log"] [aria-current="true"]', (el) => {
    const box = el.getBoundingClientRect();
    const log = /** @type {Element} */ (el.closest('[role="log"]')).getBoundingClientRect();
    return { text: el.textContent || "", visible: box.bottom > log.top && box.top < log.bottom };
  });
  assert.ok(found.text.includes("Thanks, got the tracking number"), found.text);
  assert.ok(found.visible, "scrolled into view");
  await page.$eval(SEARCH, (e) => {
    e.value = "";
    e.dispatchEvent(new Event("input", { bubbles: true }));
  });
  await page.waitForSelector(`[role="option"][aria-selected="true"][data-conversation-id="conv_${ADA}"]`, { timeout: 5000 });
});

test("no console errors so far", () => {
  assert.deepEqual(errors, []);
});

test("with the server killed and restarted, messages posted meanwhile arrive once each", async () => {
  await open(page, `conv_${ADA}`);
  await server.kill();
  await page.waitForFunction(() => document.querySelector('[role="status"]')?.textContent !== "online", { timeout: 10_000 });
  await server.start(server.port);
  const texts = [1, 2, 3, 4, 5].map((n) => `While you were away ${n}`);
  for (const t of texts) await server.webhook(inbound(ADA, "Ada Lovelace", t));
  await page.waitForFunction(() => document.querySelector('[role="status"]')?.textContent === "online", { timeout: 20_000 });
  for (const t of texts) await waitBubble(page, t, undefined, 15_000);
  await sleep(1500);
  for (const t of texts) assert.equal((await bubblesWith(page, t)).length, 1, t);
  // Nothing shown twice in the whole chat either.
  const ids = await page.$$eval("[data-message-id]", (els) => els.map((e) => e.getAttribute("data-message-id")));
  assert.equal(new Set(ids).size, ids.length);
  // Only connection failures while the server was down.
  const others = errors.filter((e) => !/ERR_CONNECTION_REFUSED|WebSocket connection|ERR_EMPTY_RESPONSE|net::ERR/.test(e));
  assert.deepEqual(others, []);
  errors.length = 0;
});

test("phone width shows the list or the chat, with a back button", async () => {
  const phone = await newPage(390, 844);
  await phone.goto(server.url);
  await phone.waitForSelector(LIST, { visible: true });
  assert.equal(await phone.$(LOG), null);
  await open(phone, `conv_${ADA}`);
  await phone.waitForSelector(LOG, { visible: true });
  assert.equal(await phone.$eval(".sidebar", (e) => getComputedStyle(e).display), "none");
  await phone.click('::-p-aria([name="Back"][role="button"])');
  await phone.waitForSelector(LIST, { visible: true });
  assert.equal(await phone.$(LOG), null);
  await phone.close();
  assert.deepEqual(errors, []);
});

test("with API_TOKENS set, the token form lets the user in", async () => {
  const token = "inbox-test-token-0123456789abcdef";
  const guarded = new Server("guarded", { API_TOKENS: token });
  await guarded.start();
  try {
    const p = await newPage();
    await p.goto(guarded.url);
    await p.waitForSelector('::-p-aria([name="Access token"])', { timeout: 10_000 });
    assert.equal(await p.$eval('::-p-aria([name="Access token"])', (e) => e.type), "password");
    await p.type('::-p-aria([name="Access token"])', token);
    await p.keyboard.press("Enter");
    await p.waitForSelector(LIST);
    await p.waitForFunction(() => document.querySelector('[role="status"]')?.textContent === "online", { timeout: 10_000 });
    assert.equal(await p.evaluate(() => Object.keys(localStorage).length), 0, "nothing in localStorage");
    assert.equal(await p.evaluate(() => Object.values(sessionStorage).includes("inbox-test-token-0123456789abcdef")), true);
    assert.ok(!p.url().includes(token));
    await p.close();
    // The 401s that asked for the token are the only errors.
    const others = errors.filter((e) => !/status of 401/.test(e));
    assert.deepEqual(others, []);
  } finally {
    await guarded.kill();
  }
});

test("with two business numbers: a switcher narrows the list (live too, and after a reload), the header names the number, a new chat asks which one", async () => {
  const home = metadata;
  const other = { display_phone_number: "15550783881", phone_number_id: "200000000000002" };
  const CAROL = "447700900777";
  const DAVE = "447700900888";
  const ERIN = "447700900999";
  const FRANK = "447700900111";
  const GINA = "447700900222";
  /** An inbound text through business number `number`. */
  const through = (number, waId, name, text) => ({ ...inbound(waId, name, text), metadata: number });
  const earlier = errors.length;
  const numbered = new Server("numbers");
  await numbered.start();
  try {
    // The first number written to is the home number: its conversations keep `conv_<wa_id>`.
    await numbered.webhook(through(home, CAROL, "Carol Home", "Hello, home number"));
    await waitFor(async () => (await numbered.api("/api/conversations")).length === 1, 10_000, "Carol's conversation");
    await numbered.webhook(through(other, DAVE, "Dave Other", "Hello, other number"));
    await waitFor(async () => (await numbered.api("/api/numbers")).length === 2, 10_000, "two numbers");
    const daveId = (await numbered.api(`/api/conversations?phoneNumberId=${other.phone_number_id}`))[0]?.conversationId;
    assert.ok(daveId, "Dave's conversation, listed under the other number");

    const p = await newPage();
    await p.goto(numbered.url);
    await p.waitForSelector(SWITCHER, { timeout: 10_000 });
    const radios = () =>
      p.$$eval(`[role="radiogroup"][aria-label="Business number"] input[type="radio"]`, (els) =>
        els.map((e) => ({ name: e.getAttribute("aria-label"), checked: /** @type {HTMLInputElement} */ (e).checked })),
      );
    assert.deepEqual(
      (await radios()).map((r) => r.name),
      ["All numbers", "+1 555 000 1111", "+1 555 078 3881"],
    );
    assert.equal((await radios())[0].checked, true, "all numbers at first");
    await waitFor(async () => (await rows(p)).length === 2, 5000, "both conversations listed");

    // One number: only its conversations.
    await p.click('::-p-aria([name="+1 555 078 3881"][role="radio"])');
    await waitFor(async () => {
      const shown = await rows(p);
      return shown.length === 1 && shown[0].id === daveId;
    }, 5000, "only Dave's conversation");

    // Live: a message through the home number stays out of the list (its
    // chip counts it as unread), one through the number shown comes in.
    await numbered.webhook(through(home, ERIN, "Erin Home", "Through the home number"));
    await numbered.webhook(through(other, FRANK, "Frank Other", "Through the other number"));
    await waitFor(async () => (await rows(p)).some((r) => r.name === "Frank Other"), 10_000, "Frank's conversation, live");
    assert.deepEqual((await rows(p)).map((r) => r.name).sort(), ["Dave Other", "Frank Other"]);
    const homeUnread = () =>
      p.$eval('::-p-aria([name="+1 555 000 1111"][role="radio"])', (e) => e.closest("label")?.querySelector(".chip-count")?.textContent ?? "");
    await waitFor(async () => (await homeUnread()) === "2", 5000, "the home number's unread count to be 2");

    // The choice survives a reload (for this tab).
    await p.reload();
    await p.waitForSelector(SWITCHER, { timeout: 10_000 });
    await waitFor(async () => (await rows(p)).length === 2, 10_000, "the narrowed list after the reload");
    assert.deepEqual((await rows(p)).map((r) => r.name).sort(), ["Dave Other", "Frank Other"]);
    assert.equal((await radios()).find((r) => r.checked)?.name, "+1 555 078 3881");

    // The chat header names the business number of the conversation.
    await p.click('::-p-aria([name="+1 555 000 1111"][role="radio"])');
    await waitFor(async () => (await rows(p)).map((r) => r.name).sort().join() === "Carol Home,Erin Home", 5000, "the home number's conversations");
    await open(p, `conv_${CAROL}`);
    await p.waitForFunction(() => document.querySelector(".chat-header")?.textContent?.includes("via +1 555 000 1111"), { timeout: 5000 });

    // "New chat" asks which number (the one shown by default) and opens the new conversation.
    await p.click('::-p-aria([name="New chat"][role="button"])');
    await p.waitForSelector('::-p-aria([name="Start a chat"][role="form"])');
    assert.equal(await p.$eval('::-p-aria([name="From business number"])', (e) => /** @type {HTMLSelectElement} */ (e).value), home.phone_number_id);
    await p.type('::-p-aria([name="Phone number"])', `+${GINA}`);
    await p.click('::-p-aria([name="Start chat"][role="button"])');
    await p.waitForSelector(`[role="option"][aria-selected="true"][data-conversation-id="conv_${GINA}"]`, { timeout: 10_000 });
    await waitBubble(p, "hello_world");
    const started = await numbered.api(`/api/conversations?phoneNumberId=${home.phone_number_id}`);
    assert.ok(started.some((c) => c.conversationId === `conv_${GINA}`), "the new chat is the home number's");

    // All numbers again: every conversation.
    await p.click('::-p-aria([name="All numbers"][role="radio"])');
    await waitFor(async () => (await rows(p)).length === 5, 5000, "all five conversations");
    await p.screenshot({ path: path.join(process.env.INBOX_SCREENSHOT_DIR || TMP, "inbox-numbers.png") });
    await p.close();
    assert.deepEqual(errors.slice(earlier), []);
  } finally {
    await numbered.kill();
  }
});
