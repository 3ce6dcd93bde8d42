// Loads the network page in headless Chromium (the Debian package, driven by playwright-core)
// and checks what a person would see, for tests/web/test_network_page_browser.py:
//   1. every peer id in --peers has a row in the peers table, then prints the line READY;
//   2. a workflow named --workflow appears and its <progress> reaches its max (100%), with the
//      per-peer shares filled in and the clock DAG drawn; then a full-page screenshot.
// Prints one JSON object as its last line ({"ok": true, ...} or {"ok": false, "error": ...}).
// Any console error or page error (a CSP refusal, a script bug) fails the run.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    peers: { type: "string" },
    workflow: { type: "string" },
    screenshot: { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    timeout: { type: "string", default: "180" },
  },
});
const timeout = Number(args.timeout) * 1000;
const peers = args.peers.split(",").filter(Boolean);
const profile = mkdtempSync(join(tmpdir(), "ia-chromium-"));
const problems = [];
let browser;
let page;

function done(result, code) {
  console.log(JSON.stringify(result));
  process.exitCode = code;
}

try {
  // a fresh profile: playwright passes it as --user-data-dir (it refuses the flag in args)
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: args.chromium,
    headless: true,
    viewport: { width: 1360, height: 900 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
  page = browser.pages()[0] || await browser.newPage();
  page.on("console", (msg) => { if (msg.type() === "error") problems.push(`console: ${msg.text()}`); });
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  const response = await page.goto(args.url, { waitUntil: "load", timeout });
  if (!response || response.status() !== 200) throw new Error(`GET ${args.url} answered ${response && response.status()}`);

  // 1. both peers listed
  await page.waitForFunction((ids) => ids.every((id) => document.querySelector(`#peers tbody tr[data-peer-id="${id}"]`)),
                             peers, { timeout, polling: 200 });
  console.log("READY");

  // 2. the workflow reaches 100%, live: the test submits it only after READY
  const handle = await page.waitForFunction((name) => {
    for (const row of document.querySelectorAll("#workflows tbody tr")) {
      if (row.querySelector("th")?.textContent !== name) continue;
      const bar = row.querySelector("progress");
      const shares = row.querySelector(".shares");
      if (bar && Number(bar.value) === Number(bar.max) && shares && !/counting/.test(row.textContent)) {
        return { id: row.dataset.workflowId, value: Number(bar.value), max: Number(bar.max),
                 label: bar.getAttribute("aria-label"), text: row.textContent };
      }
    }
    return null;
  }, args.workflow, { timeout, polling: 200 });
  const workflow = await handle.jsonValue();
  const seen = await page.evaluate(() => ({
    h1: document.querySelector("h1")?.textContent,
    h2: [...document.querySelectorAll("h2")].map((h) => h.textContent),
    peers: [...document.querySelectorAll("#peers tbody tr")].map((r) => ({
      id: r.dataset.peerId, name: r.querySelector("th").textContent,
      connection: r.querySelector('td[data-col="connection"]')?.textContent })),
    dagEvents: document.querySelectorAll("#dag circle").length,
    dagLabel: document.querySelector("#dag title")?.textContent,
    throughputLabel: document.querySelector("#throughput title")?.textContent,
    updates: Number(document.body.dataset.updates || 0),
    problem: document.getElementById("problem")?.textContent,
  }));
  await page.screenshot({ path: args.screenshot, fullPage: true });
  if (problems.length) throw new Error(problems.join("; "));
  done({ ok: true, workflow, ...seen }, 0);
} catch (err) {
  if (page) await page.screenshot({ path: args.screenshot, fullPage: true }).catch(() => {});
  const html = page ? await page.content().catch(() => "") : "";
  done({ ok: false, error: String(err && err.message || err), problems, html: html.slice(0, 4000) }, 1);
} finally {
  if (browser) await browser.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
