// The demo's guest in headless Chromium over each transport, in one run: download and
// upload through the relay's NAT and ping the gateway, with the relay's frame counters per
// transport. Run through loadtest/transport-bench.sh, which makes the "internet" namespace
// and the relay; docs/benchmarks.md has the results and the command.
//
// Env (set by the .sh): V86_RELAY_ADDR, V86_RELAY_METRICS (host:port), V86_BENCH_TARGET (IP
// of the internet host: HTTP on 8000, upload sink on 9000).
// Options: --mib N (per transfer, default 16), --rounds N (default 1; every transport once
// per round, the order rotated so no transport always goes first), --only a,b.
// Prints one JSON line per measurement and a Markdown table of medians.
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const { chromium } = await import(path.join(here, "../tests/js/node_modules/playwright-core/index.mjs"));

const addr = process.env.V86_RELAY_ADDR;
const metricsAddr = process.env.V86_RELAY_METRICS;
const target = process.env.V86_BENCH_TARGET;
if (!addr || !metricsAddr || !target) {
  console.error("run loadtest/transport-bench.sh (it sets V86_RELAY_ADDR, V86_RELAY_METRICS, V86_BENCH_TARGET)");
  process.exit(2);
}
function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}
const bytes = Number(arg("mib", "16")) * 1024 * 1024;
const rounds = Number(arg("rounds", "1"));
const ALL = ["websocket", "webtransport", "webrtc"];
const only = arg("only", ALL.join(",")).split(",");

/** The relay's counters (name{label="value"} -> number), and the kernel's UDP drops on this
 *  host (both ends of WebRTC and WebTransport are on loopback here). */
async function metrics() {
  const text = await (await fetch(`http://${metricsAddr}/metrics`)).text();
  const out = {};
  const snmp = readFileSync("/proc/net/snmp", "utf8").split("\n").filter((l) => l.startsWith("Udp:"));
  const [names, values] = snmp.map((l) => l.split(/\s+/).slice(1));
  names.forEach((n, i) => /Errors/.test(n) && (out[`kernel_udp_${n}`] = Number(values[i])));
  // Which socket overflowed: the relay's (WebTransport on its port, WebRTC on the next) or
  // another one (the browser's).
  const relayPort = Number(addr.split(":")[1]);
  for (const line of readFileSync("/proc/net/udp", "utf8").split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 13) continue;
    const port = parseInt(f[1].split(":")[1], 16);
    const who = port === relayPort ? "relay_webtransport" : port === relayPort + 1 ? "relay_webrtc" : "other";
    const key = `socket_drops{socket="${who}"}`;
    out[key] = (out[key] || 0) + Number(f[12]);
  }
  for (const line of text.split("\n")) {
    const m = line.match(/^([a-z0-9_]+)(\{[^}]*\})? (\S+)$/);
    if (m) out[m[1] + (m[2] || "")] = Number(m[3]);
  }
  return out;
}
const diff = (a, b) => Object.fromEntries(Object.keys(b).map((k) => [k, b[k] - (a[k] || 0)]).filter(([, v]) => v));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
  ],
});
const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });

let seq = 0;
/** Runs a command on the guest's serial console; returns {rc, output, ms}. */
async function run(page, cmd, timeout = 300000) {
  const id = `c${++seq}`;
  const from = await page.evaluate(() => window.demo.serial.length);
  const t = Date.now();
  await page.evaluate((line) => window.demo.emulator.serial0_send(line), `${cmd}; echo "@@${id} rc=$?"\n`);
  const re = `@@${id} rc=(\\d+)`;
  await page.waitForFunction(([re, from]) => new RegExp(re).test(window.demo.serial.slice(from)), [re, from], {
    timeout,
    polling: 50,
  });
  const ms = Date.now() - t;
  const out = await page.evaluate(() => window.demo.serial);
  const m = out.slice(from).match(new RegExp(re));
  return { rc: Number(m[1]), output: out.slice(from, from + m.index), ms };
}

async function open(transport, host) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${transport}] page error: ${e}`));
  page.on("console", (m) => m.type() === "error" && console.error(`[${transport}] console: ${m.text()}`));
  await page.goto(`http://${addr}/?lan=bench-${transport}&host=${host}&transport=${transport}`);
  await page.waitForSelector("#boot:not([disabled])");
  await page.click("#boot");
  await page.waitForFunction(() => window.demo.ready, null, { timeout: 600000, polling: 250 });
  return page;
}

// The guest's own clock (/proc/uptime, 10 ms) times each transfer: what the guest sees,
// without the serial console's delay.
const timed = (cmd) =>
  `a=$(cut -d' ' -f1 /proc/uptime); ${cmd}; r=$?; b=$(cut -d' ' -f1 /proc/uptime); echo "T $a $b"; [ $r = 0 ]`;
function secs(output) {
  const m = output.match(/T (\d+\.\d+) (\d+\.\d+)/);
  if (!m) throw new Error(`no timing in ${JSON.stringify(output.slice(-300))}`);
  return Number(m[2]) - Number(m[1]);
}

async function measure(transport) {
  const t0 = Date.now();
  const page = await open(transport, `bench-${transport.slice(0, 5)}`);
  const bootMs = Date.now() - t0;
  try {
    // A first small transfer: ARP, the NAT flow table and TCP's first window are warm.
    const warm = await run(page, `wget -q -O /dev/null http://${target}:8000/262144`);
    if (warm.rc !== 0) throw new Error(`warm-up download failed:\n${warm.output}`);
    const ping = await run(page, "ping -c 20 -i 0.2 -q 10.0.2.2");
    const rtt = ping.output.match(/= [\d.]+\/([\d.]+)\//);

    const m0 = await metrics();
    const dl = await run(page, timed(`wget -q -O /dev/null http://${target}:8000/${bytes}`));
    if (dl.rc !== 0) throw new Error(`download failed:\n${dl.output}`);
    const m1 = await metrics();
    const ul = await run(page, timed(`(echo ${bytes}; head -c ${bytes} /dev/zero) | nc ${target} 9000`));
    if (ul.rc !== 0 || !/ok [\d.]+/.test(ul.output)) throw new Error(`upload failed:\n${ul.output}`);
    const m2 = await metrics();

    const row = {
      transport,
      boot_s: bootMs / 1000,
      download_mbit: (bytes * 8) / secs(dl.output) / 1e6,
      upload_mbit: (bytes * 8) / secs(ul.output) / 1e6,
      upload_mbit_receiver: (bytes * 8) / Number(ul.output.match(/ok ([\d.]+)/)[1]) / 1e6,
      ping_ms: rtt ? Number(rtt[1]) : null,
      download: diff(m0, m1),
      upload: diff(m1, m2),
    };
    console.log(JSON.stringify(row));
    return row;
  } finally {
    await page.close();
  }
}

const results = [];
let code = 0;
try {
  // A cold boot first, which saves the VM state in IndexedDB: every measured page restores
  // it, so no measurement runs beside a boot or a state save.
  const t0 = Date.now();
  const first = await open("websocket", "bench-boot");
  await first.waitForFunction(() => window.demo.saved, null, { timeout: 120000, polling: 250 });
  await first.close();
  console.log(`cold boot and state save: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  for (let r = 0; r < rounds; r++) {
    const order = only.map((_, i) => only[(i + r) % only.length]);
    for (const t of order) results.push({ round: r, ...(await measure(t)) });
  }
} catch (e) {
  code = 1;
  console.error(`TRANSPORT-BENCH FAILED: ${e.stack || e}`);
}
await browser.close();

const median = (xs) => {
  const s = xs.filter((x) => x != null).sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : null;
};
const fmt = (x, d = 1) => (x == null ? "-" : x.toFixed(d));
const frames = (rows, phase, name, t) =>
  median(rows.map((r) => r[phase][`v86_relay_${name}_total{transport="${t}"}`] || 0));
const base = results.filter((r) => r.transport === "websocket");
// A ratio compares a transport with WebSocket in the same round (the machine's load moves
// between rounds more than between transports of one round).
const ratios = (t, key) =>
  results
    .filter((r) => r.transport === t)
    .map((r) => {
      const ws = base.find((b) => b.round === r.round);
      return ws ? r[key] / ws[key] : null;
    })
    .filter((x) => x != null);
console.log(`\n${bytes / 1048576} MiB each way, ${rounds} round(s); Mbit/s are medians; "x WebSocket" is each round's ratio to WebSocket in that round; frames = relay's frames_sent / frames_received during the transfer (medians)\n`);
console.log("| transport | download Mbit/s | x WebSocket | upload Mbit/s | x WebSocket | ping ms | download frames sent / received | upload frames sent / received | losses counted |");
console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
for (const t of only) {
  const rows = results.filter((r) => r.transport === t);
  if (!rows.length) continue;
  const dl = median(rows.map((r) => r.download_mbit));
  const ul = median(rows.map((r) => r.upload_mbit));
  const losses = {};
  for (const r of rows) {
    for (const phase of [r.download, r.upload]) {
      for (const [k, v] of Object.entries(phase)) {
        if (/drop|lost|abandon|refused|RcvbufErrors|SndbufErrors/.test(k)) losses[k] = (losses[k] || 0) + v;
      }
    }
  }
  console.log(
    `| ${t} | ${fmt(dl)} | ${ratios(t, "download_mbit").map((x) => fmt(x, 2)).join(" / ") || "-"} | ${fmt(ul)} | ${
      ratios(t, "upload_mbit").map((x) => fmt(x, 2)).join(" / ") || "-"
    } | ${fmt(
      median(rows.map((r) => r.ping_ms)),
      2,
    )} | ${frames(rows, "download", "frames_sent", t)} / ${frames(rows, "download", "frames_received", t)} | ${frames(
      rows,
      "upload",
      "frames_sent",
      t,
    )} / ${frames(rows, "upload", "frames_received", t)} | ${
      Object.entries(losses)
        .map(([k, v]) => `${k} ${v}`)
        .join(", ") || "none"
    } |`,
  );
}
process.exit(code);
