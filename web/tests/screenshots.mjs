// Screenshots of the web inbox for docs/: desktop and phone, light and dark.
//   node web/tests/screenshots.mjs http://127.0.0.1:3000 docs [conversationId]
// Run against a server with data in it (e.g. `serve --import webhook_files`).
import path from "node:path";
import puppeteer from "puppeteer-core";

const [base = "http://127.0.0.1:3000", out = "docs", conversation] = process.argv.slice(2);
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM_BIN || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"],
});
try {
  for (const scheme of ["light", "dark"]) {
    for (const [kind, width, height, scale] of [["desktop", 1280, 760, 1], ["phone", 390, 780, 2]]) {
      const page = await browser.newPage();
      page.on("console", (m) => m.type() === "error" && console.error(m.text()));
      await page.setViewport({ width, height, deviceScaleFactor: scale });
      await page.emulateMediaFeatures([{ name: "prefers-color-scheme", value: scheme }]);
      await page.goto(base);
      await page.waitForSelector('[role="option"]');
      const id = conversation || (await page.$eval('[role="option"]', (e) => e.getAttribute("data-conversation-id")));
      await page.click(`[role="option"][data-conversation-id="${id}"]`);
      await page.waitForSelector("[data-message-id]");
      await new Promise((r) => setTimeout(r, 700));
      const file = path.join(out, `inbox-${kind}-${scheme}.png`);
      await page.screenshot({ path: file });
      console.log(file);
      await page.close();
    }
  }
} finally {
  await browser.close();
}
