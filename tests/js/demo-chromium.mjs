// The demo page in headless Chromium: two tabs on one LAN boot the guest (the second one
// restores the state the first saved in IndexedDB), ping each other by host name, and the
// LAN panel lists both. Both tabs show the Packets panel (tab A opened by a teacher-style
// link, ?packets=1; tab B by its checkbox), whose decoded lines must show the ping's echo
// request and reply; tab A downloads the last minutes as pcapng. Saves
// test-artifacts/demo-chromium.png, demo-chromium-b.png, demo-packets.png and
// demo-packets.pcapng.
// Env: V86_RELAY_ADDR=127.0.0.1:PORT (required), V86_RELAY_LAN (default "classroom"),
// V86_RELAY_DEMO_MTU=65520 (both tabs on a jumbo LAN: eth0 has that MTU, 30000-byte pings pass).
// Prints `TIMING name ms` lines and `DEMO-CHROMIUM OK` on success.
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { chromium } from "playwright-core";
import { repo } from "./guest-lib.mjs";

const addr = process.env.V86_RELAY_ADDR;
if (!addr) {
  console.error("set V86_RELAY_ADDR=127.0.0.1:PORT of a running relay");
  process.exit(2);
}
const lan = process.env.V86_RELAY_LAN || "classroom";
// V86_RELAY_DEMO_MTU=65520: both tabs pick the large MTU (the first one's join creates the LAN with it).
const mtu = process.env.V86_RELAY_DEMO_MTU || "";
const mtuQuery = mtu ? `&mtu=${mtu}` : "";
const artifacts = path.join(repo, "test-artifacts");
const timing = (what, since) => console.log(`TIMING ${what} ${Date.now() - since}`);
const t0 = Date.now();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    // Two emulators in one browser: keep the tab in the background running at full speed.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
  ],
});
const context = await browser.newContext({ viewport: { width: 1400, height: 820 } });
const pages = [];

async function open(host, extra = "") {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${host}] page error: ${e}`));
  page.on("console", (m) => m.type() === "error" && console.error(`[${host}] console: ${m.text()}`));
  await page.goto(`http://${addr}/?lan=${lan}&host=${host}${extra}${mtuQuery}`);
  await page.waitForSelector("#boot:not([disabled])");
  pages.push({ host, page });
  return page;
}

async function readyOf(page, timeout) {
  await page.waitForFunction(() => window.demo.ready, null, { timeout, polling: 250 });
  return page.evaluate(() => window.demo.ready);
}

let seq = 0;
/** Runs a command on the page's serial console; returns {rc, output}. */
async function run(page, cmd, timeout = 30000) {
  const id = `c${++seq}`;
  const from = await page.evaluate(() => window.demo.serial.length);
  await page.evaluate((line) => window.demo.emulator.serial0_send(line), `${cmd}; echo "@@${id} rc=$?"\n`);
  const re = `@@${id} rc=(\\d+)`;
  await page.waitForFunction(([re, from]) => new RegExp(re).test(window.demo.serial.slice(from)), [re, from], {
    timeout,
    polling: 250,
  });
  const out = await page.evaluate(() => window.demo.serial);
  const m = out.slice(from).match(new RegExp(re));
  return { rc: Number(m[1]), output: out.slice(from, from + m.index) };
}

async function main() {
  let t = Date.now();
  const a = await open("vm-a", "&packets=1");
  await a.click("#boot");
  const readyA = await readyOf(a, 400000);
  timing("tab_a_cold_boot_to_lease", t);
  console.log(`vm-a: ${JSON.stringify(readyA)}`);
  // Tab A saves its state by itself after the first boot; tab B restores it.
  await a.waitForFunction(() => window.demo.saved, null, { timeout: 60000, polling: 250 });

  t = Date.now();
  const b = await open("vm-b");
  await b.check("#packets-on");
  await b.click("#boot");
  const readyB = await readyOf(b, 120000);
  timing("tab_b_restore_to_lease", t);
  console.log(`vm-b: ${JSON.stringify(readyB)} restored=${await b.evaluate(() => window.demo.restored)}`);
  if (readyA.ip === readyB.ip || readyA.mac === readyB.mac) throw new Error("the tabs share an address");

  t = Date.now();
  const pb = await run(b, "ping -c 2 -W 3 vm-a");
  if (pb.rc !== 0 || !pb.output.includes(readyA.ip)) throw new Error(`vm-b cannot ping vm-a:\n${pb.output}`);
  const pa = await run(a, "ping -c 2 -W 3 vm-b");
  if (pa.rc !== 0 || !pa.output.includes(readyB.ip)) throw new Error(`vm-a cannot ping vm-b:\n${pa.output}`);
  timing("ping_each_other", t);
  if (mtu) {
    const link = await run(a, "cat /sys/class/net/eth0/mtu");
    if (!link.output.includes(mtu)) throw new Error(`vm-a's eth0 MTU is not ${mtu}:\n${link.output}`);
    const big = await run(b, `ping -c 2 -W 3 -s 30000 vm-a`);
    if (big.rc !== 0) throw new Error(`a 30000-byte ping does not pass at MTU ${mtu}:\n${big.output}`);
    console.log(`MTU ${mtu}: eth0 has it, 30000-byte pings pass`);
  }

  // The LAN panel of tab A lists both machines with their names and addresses.
  await a.waitForFunction(
    (hosts) => hosts.every((h) => (window.demo.machines || []).some((m) => m.host === h && m.ip)),
    ["vm-a", "vm-b"],
    { timeout: 15000, polling: 250 },
  );
  const panel = await a.locator("#machines").innerText();
  console.log(`LAN panel:\n${panel}`);
  for (const h of ["vm-a", "vm-b", readyA.ip, readyB.ip]) {
    if (!panel.includes(h)) throw new Error(`LAN panel lacks ${h}`);
  }
  await a.bringToFront();
  // A clean console for the screenshot (no test markers).
  const from = await a.evaluate(() => window.demo.serial.length);
  await a.evaluate(() => window.demo.emulator.serial0_send("clear; ip -4 addr show eth0; ping -c 2 vm-b\n"));
  await a.waitForFunction((from) => window.demo.serial.slice(from).includes("round-trip"), from, {
    timeout: 20000,
    polling: 250,
  });
  await a.waitForTimeout(500);
  await mkdir(artifacts, { recursive: true });
  await a.screenshot({ path: path.join(artifacts, "demo-chromium.png") });

  // The Packets panels: the last ping (vm-a -> vm-b), decoded, in both tabs.
  t = Date.now();
  for (const [name, page] of [["vm-a", a], ["vm-b", b]]) {
    await page.waitForFunction(
      () => {
        const lines = window.demoPackets.lines;
        return (
          lines.some((l) => /^vm-a -> vm-b  ICMP echo request id=\d+ seq=\d+$/.test(l)) &&
          lines.some((l) => /^vm-b -> vm-a  ICMP echo reply id=\d+ seq=\d+$/.test(l))
        );
      },
      null,
      { timeout: 15000, polling: 250 },
    ).catch(async (e) => {
      const lines = await page.evaluate(() => window.demoPackets.lines.slice(-40));
      const status = await page.locator("#packets-status").innerText();
      throw new Error(`${name}'s Packets panel lacks the echo request/reply (${status}):\n${lines.join("\n")}\n${e}`);
    });
  }
  const lines = await a.evaluate(() => window.demoPackets.lines);
  console.log(`Packets panel of vm-a (${lines.length} lines), last 12:\n${lines.slice(-12).join("\n")}`);
  for (const want of [/DHCP (DISCOVER|REQUEST)/, /ARP who-has/]) {
    if (!lines.some((l) => want.test(l))) throw new Error(`vm-a's Packets panel lacks ${want}`);
  }
  const download = a.waitForEvent("download", { timeout: 10000 });
  await a.click("#packets-download");
  await (await download).saveAs(path.join(artifacts, "demo-packets.pcapng"));
  const bytes = await a.evaluate(() => window.demoPackets.lastDownloadBytes);
  if (!(bytes > 100)) throw new Error(`the pcapng download has ${bytes} bytes`);
  console.log(`pcapng download: ${bytes} bytes`);
  await a.locator("#packets-panel").scrollIntoViewIfNeeded();
  await a.screenshot({ path: path.join(artifacts, "demo-packets.png"), fullPage: true });
  timing("packets_panel", t);
  await b.screenshot({ path: path.join(artifacts, "demo-chromium-b.png") });
  console.log(`screenshots in ${artifacts}`);
  timing("total", t0);
  console.log("DEMO-CHROMIUM OK");
}

let code = 0;
try {
  await main();
} catch (e) {
  code = 1;
  console.error(`DEMO-CHROMIUM FAILED: ${e.stack || e}`);
  for (const { host, page } of pages) {
    const serial = await page.evaluate(() => window.demo.serial).catch(() => "");
    console.error(`--- ${host} serial console (tail) ---\n${serial.slice(-3000)}`);
    await mkdir(artifacts, { recursive: true }).catch(() => {});
    await page.screenshot({ path: path.join(artifacts, `demo-chromium-failed-${host}.png`) }).catch(() => {});
  }
}
await browser.close();
process.exit(code);
