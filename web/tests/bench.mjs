// Measures the web inbox for BENCHMARKS.md, against a running server with
// an empty data dir (it adds 10,000 conversations, then 10,000 messages):
//   node web/tests/bench.mjs http://127.0.0.1:3000
// Prints: first-load bytes (compressed, as transferred), time to a rendered
// list of 50, DOM nodes with 10,000 conversations loaded by scrolling, and
// the JS heap after 10,000 live messages into the open chat.
import puppeteer from "puppeteer-core";

const [base = "http://127.0.0.1:3000"] = process.argv.slice(2);
const metadata = { display_phone_number: "15550001111", phone_number_id: "106540352242922" };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function webhook(messages) {
  const body = { object: "whatsapp_business_account", entry: [{ id: "1", changes: [{ field: "messages", value: { messaging_product: "whatsapp", metadata, messages } }] }] };
  const r = await fetch(`${base}/webhook`, { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
  if (!r.ok) throw new Error(`${r.status} ${await r.text()}`);
}
async function total() {
  return (await (await fetch(`${base}/api/stats`)).json()).totalMessages;
}

const t = Math.floor(Date.now() / 1000) - 86400;
const start = await total();
const seeded = (await (await fetch(`${base}/api/stats`)).json()).totalConversations >= 10_000;
for (let batch = 0; batch < (seeded ? 0 : 20); batch++) {
  await webhook(
    Array.from({ length: 500 }, (_, i) => {
      const n = batch * 500 + i;
      return { from: String(3361000000 + n), id: `wamid.bench.conv.${n}`, timestamp: String(t + n), type: "text", text: { body: `Hello number ${n}` } };
    }),
  );
}
while (!seeded && (await total()) < start + 10_000) await sleep(200);

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM_BIN || "/usr/bin/chromium",
  headless: true,
  protocolTimeout: 600_000,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync", "--enable-precise-memory-info"],
});
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  const cdp = await page.createCDPSession();
  await cdp.send("Network.enable");
  await cdp.send("Network.setCacheDisabled", { cacheDisabled: true });
  let bytes = 0;
  cdp.on("Network.loadingFinished", (e) => (bytes += e.encodedDataLength));
  const began = Date.now();
  await page.goto(base);
  await page.waitForSelector('[role="option"][aria-setsize="50"]');
  const toList = Date.now() - began;
  await sleep(500);
  const firstLoad = bytes;

  // Scroll the list down until every conversation is loaded.
  for (let i = 0; i < 4000; i++) {
    const n = await page.$eval('[role="listbox"]', (e) => {
      const s = /** @type {HTMLElement} */ (e.parentElement);
      s.scrollTop = s.scrollHeight;
      return Number(e.querySelector('[role="option"]')?.getAttribute("aria-setsize") ?? 0);
    });
    if (n >= 10_000) break;
    await sleep(40);
  }
  const loaded = await page.$eval('[role="option"]', (e) => Number(e.getAttribute("aria-setsize")));
  const nodes = await page.evaluate(() => document.getElementsByTagName("*").length);

  // 10,000 live messages into the open chat.
  console.log(`first load, compressed bytes transferred: ${firstLoad}`);
  console.log(`navigation to a rendered list of 50: ${toList} ms`);
  console.log(`conversations loaded by scrolling: ${loaded}; DOM elements: ${nodes}`);
  const first = await page.$eval('[role="option"]', (e) => {
    /** @type {HTMLElement} */ (e).click();
    return e.getAttribute("data-conversation-id");
  });
  await page.waitForSelector("[data-message-id]");
  const from = String(first).slice(5);
  for (let batch = 0; batch < 20; batch++) {
    await webhook(Array.from({ length: 500 }, (_, i) => ({ from, id: `wamid.bench.live.${began}.${String(batch * 500 + i).padStart(5, "0")}`, timestamp: String(Math.floor(Date.now() / 1000)), type: "text", text: { body: `Live message ${batch * 500 + i}` } })));
  }
  // The chat keeps its newest messages in the DOM: wait for the last one
  // (the newest: same second, the highest id).
  await page.waitForFunction(() => !!document.evaluate("//*[@data-message-id][contains(., 'Live message 9999')]", document, null, 9, null).singleNodeValue, { timeout: 300_000, polling: 1000 });
  await page.evaluate(() => new Promise((r) => setTimeout(r, 1000)));
  await cdp.send("HeapProfiler.collectGarbage");
  const heap = await cdp.send("Runtime.getHeapUsage");
  const chatNodes = await page.evaluate(() => document.getElementsByTagName("*").length);

  console.log(`after 10,000 live messages in the open chat: JS heap used ${(heap.usedSize / 1048576).toFixed(1)} MB; DOM elements ${chatNodes}`);
} finally {
  await browser.close();
}
