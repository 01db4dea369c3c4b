// Measures, for BENCHMARKS.md, the time from a webhook POST to its bubble
// painted in the web inbox, at a steady rate, against a running server:
//   node web/tests/bench-latency.mjs http://127.0.0.1:3000 [rate/s] [seconds]
// (defaults: 100 messages/s for 10 s, after a 1 s warm-up that is not counted).
// It opens the inbox in headless Chromium with one conversation open, then
// posts one webhook per message (one new text message each, to that
// conversation) on a fixed schedule from Node. In the page, a
// MutationObserver on the Messages log notes each new `data-message-id`;
// the time after the next frame (requestAnimationFrame, then a task) is the
// paint time. Latency = paint time − the time just before the POST was sent,
// both on the machine's wall clock (`performance.timeOrigin +
// performance.now()` in Node and in the page; their offset is measured by
// round trips and printed).
import puppeteer from "puppeteer-core";

const [base = "http://127.0.0.1:3000", rateArg = "100", secondsArg = "10"] = process.argv.slice(2);
const RATE = Number(rateArg);
const SECONDS = Number(secondsArg);
const WARMUP = 1;
const metadata = { display_phone_number: "15550001111", phone_number_id: "106540352242922" };
const sleep = (/** @type {number} */ ms) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.timeOrigin + performance.now();
const LOG = '::-p-aria([name="Messages"][role="log"])';

const run = Date.now();
const from = String(3369000000 + (run % 1_000_000));

/** @param {object[]} messages */
async function webhook(messages) {
  const body = { object: "whatsapp_business_account", entry: [{ id: "1", changes: [{ field: "messages", value: { messaging_product: "whatsapp", metadata, contacts: [{ profile: { name: "Latency Bench" }, wa_id: from }], messages } }] }] };
  const r = await fetch(`${base}/webhook`, { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
  if (!r.ok) throw new Error(`${r.status} ${await r.text()}`);
}
/** @param {string} id @param {string} body */
const text = (id, body) => ({ from, id, timestamp: String(Math.floor(Date.now() / 1000)), type: "text", text: { body } });

/** @param {number[]} xs sorted @param {number} p */
const pct = (xs, p) => xs[Math.min(xs.length - 1, Math.ceil((p / 100) * xs.length) - 1)];

// The conversation, with one message to open it on.
await webhook([text(`wamid.lat.${run}.seed`, "Latency bench")]);

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM_BIN || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  page.on("console", (m) => m.type() === "error" && console.error(`page: ${m.text()}`));
  // When each message's Socket.IO frame reaches the page (to split the
  // latency into server + network and the page's own part).
  await page.evaluateOnNewDocument(() => {
    /** @type {Map<string, number>} */
    const received = new Map();
    /** @type {any} */ (window).__received = received;
    const Native = window.WebSocket;
    window.WebSocket = class extends Native {
      /** @param {ConstructorParameters<typeof WebSocket>} args */
      constructor(...args) {
        super(...args);
        this.addEventListener("message", (e) => {
          const at = performance.timeOrigin + performance.now();
          if (typeof e.data === "string" && e.data.startsWith('42["newMessage"')) {
            const id = JSON.parse(e.data.slice(2))[1]?.messageId;
            if (id && !received.has(id)) received.set(id, at);
          }
        });
      }
    };
  });
  await page.goto(base);
  const option = await page.waitForSelector(`[role="option"][data-conversation-id$="${from}"]`, { timeout: 30_000 });
  await option?.click();
  await page.waitForSelector(`[data-message-id="wamid.lat.${run}.seed"]`);
  await page.waitForSelector(LOG);

  // In the page: the first time each message id is in the log, then the
  // time after the frame that shows it.
  await page.$eval(LOG, (log) => {
    /** @type {Map<string, number>} */
    const painted = new Map();
    /** @type {Set<string>} */
    const seen = new Set();
    const t = () => performance.timeOrigin + performance.now();
    const channel = new MessageChannel();
    /** @type {string[][]} */
    const waiting = [];
    channel.port1.onmessage = () => {
      const at = t();
      for (const id of waiting.shift() ?? []) painted.set(id, at);
    };
    new MutationObserver(() => {
      /** @type {string[]} */
      const fresh = [];
      for (const e of log.querySelectorAll("[data-message-id]")) {
        const id = e.getAttribute("data-message-id") ?? "";
        if (!seen.has(id)) {
          seen.add(id);
          fresh.push(id);
        }
      }
      if (fresh.length) requestAnimationFrame(() => {
        waiting.push(fresh);
        channel.port2.postMessage(0);
      });
    }).observe(log, { childList: true, subtree: true, attributes: true, attributeFilter: ["data-message-id"] });
    /** @type {any} */ (window).__painted = painted;
  });

  // The page's clock against Node's: the best of a few round trips.
  let offset = 0;
  let best = Infinity;
  for (let i = 0; i < 20; i++) {
    const a = now();
    const p = await page.evaluate(() => performance.timeOrigin + performance.now());
    const b = now();
    if (b - a < best) {
      best = b - a;
      offset = p - (a + b) / 2;
    }
  }

  // The steady stream: message i is posted at start + i / RATE.
  const total = Math.round(RATE * (WARMUP + SECONDS));
  const warm = Math.round(RATE * WARMUP);
  /** @type {Map<string, number>} */
  const sent = new Map();
  /** @type {number[]} */
  const acks = [];
  /** @type {Promise<void>[]} */
  const posts = [];
  let late = 0;
  const start = now() + 200;
  for (let i = 0; i < total; i++) {
    const due = start + (i * 1000) / RATE;
    let wait = due - now();
    if (wait > 2) await sleep(wait - 1);
    while ((wait = due - now()) > 0);
    if (wait < -5) late++;
    const id = `wamid.lat.${run}.${String(i).padStart(6, "0")}`;
    const at = now();
    if (i >= warm) sent.set(id, at);
    posts.push(webhook([text(id, `Latency ${i}`)]).then(() => void (i >= warm && acks.push(now() - at))));
  }
  await Promise.all(posts);

  // Wait for the last bubbles (at most 10 s more).
  const deadline = now() + 10_000;
  let painted = new Map();
  for (;;) {
    painted = new Map(await page.evaluate(() => [.../** @type {any} */ (window).__painted]));
    if ([...sent.keys()].every((id) => painted.has(id)) || now() > deadline) break;
    await sleep(250);
  }

  /** @type {Map<string, number>} */
  const received = new Map(await page.evaluate(() => [.../** @type {any} */ (window).__received]));
  const toPage = [...sent].filter(([id]) => received.has(id)).map(([id, at]) => Number(received.get(id)) - at).sort((x, y) => x - y);
  const inPage = [...sent].filter(([id]) => received.has(id) && painted.has(id)).map(([id]) => painted.get(id) - Number(received.get(id))).sort((x, y) => x - y);
  const lat = [...sent].filter(([id]) => painted.has(id)).map(([id, at]) => painted.get(id) - at).sort((x, y) => x - y);
  acks.sort((x, y) => x - y);
  const f = (/** @type {number} */ x) => `${x.toFixed(1)} ms`;
  console.log(`${sent.size} messages at ${RATE}/s for ${SECONDS} s (after ${WARMUP} s of warm-up); ${late} posted more than 5 ms late`);
  console.log(`page clock − Node clock: ${offset.toFixed(2)} ms (round trip ${best.toFixed(2)} ms; not corrected)`);
  console.log(`webhook POST answered: p50 ${f(pct(acks, 50))}, p99 ${f(pct(acks, 99))}, max ${f(acks[acks.length - 1])}`);
  console.log(`painted: ${lat.length} of ${sent.size}`);
  /** @param {string} what @param {number[]} xs */
  const line = (what, xs) => xs.length && console.log(`${what}: p50 ${f(pct(xs, 50))}, p90 ${f(pct(xs, 90))}, p99 ${f(pct(xs, 99))}, max ${f(xs[xs.length - 1])}, min ${f(xs[0])}`);
  line("POST to bubble painted", lat);
  line("  of which POST to the Socket.IO frame in the page", toPage);
  line("  and that frame to the bubble painted", inPage);
} finally {
  await browser.close();
}
