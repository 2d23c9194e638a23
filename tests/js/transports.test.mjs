// Headless Debian Chromium against a relay on 127.0.0.1 (started by relay/tests/browser.rs,
// which passes RELAY_URL): a page joins LAN `t` over WebTransport with web-demo/relay-client.js,
// a Node `ws` client joins over WebSocket, and (when /net/info offers it) a second page joins
// over WebRTC. Frames of 60, 1211, 1400 and 1514 bytes pass between every pair in both
// directions and are counted exactly. With BENCH=1 it also measures frames/s and round-trip
// time between two pages per transport and prints them as JSON lines starting `BENCH `.
//
// Run by hand: RELAY_URL=http://127.0.0.1:8086 node tests/js/transports.test.mjs

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import WebSocket from "ws";

const here = path.dirname(fileURLToPath(import.meta.url));
const RELAY = process.env.RELAY_URL;
if (!RELAY) throw new Error("set RELAY_URL=http://HOST:PORT of a running relay");
// A join token for a relay with [auth]: passed on /net/info, which hands it back on every
// transport's URL, and to the pages' relay-client.js.
const TOKEN = process.env.TOKEN || null;
const SIZES = [60, 1211, 1400, 1514];
const LAN = "t";

// A fresh MAC range per run: a session of an earlier run may linger until its idle timeout,
// and a MAC still live on another port would be translated by the relay.
const run = [Math.floor(Math.random() * 256), Math.floor(Math.random() * 256)];
const mac = (n) => [0x02, run[0], run[1], 0, 0x5e, n];
function frame(dst, src, size, tag) {
  const f = new Uint8Array(size);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  new DataView(f.buffer).setUint32(14, tag);
  for (let i = 18; i < size; i++) f[i] = (tag + i) & 0xff;
  return f;
}
const tagOf = (f) => new DataView(Uint8Array.from(f).buffer).getUint32(14);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The page and the module come from a loopback server of our own: the relay does not serve
// web-demo/ on this branch. /net/info answers any origin, so a page elsewhere can ask.
const clientJs = await readFile(path.join(here, "../../web-demo/relay-client.js"));
const server = http.createServer((req, res) => {
  if (req.url === "/relay-client.js") {
    res.writeHead(200, { "content-type": "text/javascript" });
    return res.end(clientJs);
  }
  res.writeHead(200, { "content-type": "text/html" });
  res.end("<!doctype html><title>transports test</title>");
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const base = `http://127.0.0.1:${server.address().port}/`;

const tokenQuery = TOKEN ? `&token=${encodeURIComponent(TOKEN)}` : "";
const info = await (await fetch(`${RELAY}/net/info?lan=${LAN}${tokenQuery}`)).json();
console.log("net/info:", JSON.stringify(info));
assert.ok(info.webtransport, "the relay offers WebTransport");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

/** A page on LAN `t` through relay-client.js, as a peer of the test. */
async function pagePeer(name, transport, n) {
  const page = await browser.newPage();
  page.on("console", (m) => console.log(`[${name}] ${m.text()}`));
  page.on("pageerror", (e) => console.log(`[${name}] page error: ${e}`));
  await page.goto(base);
  const got = await page.evaluate(
    async ({ relay, lan, transport, token }) => {
      const { connect } = await import("/relay-client.js");
      const listeners = [];
      window.rx = [];
      window.onFrame = null;
      const emulator = {
        add_listener(event, fn) {
          if (event === "net0-send") listeners.push(fn);
        },
        bus: {
          send(event, data) {
            if (event !== "net0-receive") return;
            if (window.onFrame) window.onFrame(data);
            else window.rx.push(Array.from(data));
          },
        },
      };
      window.guestSend = (bytes) => listeners.forEach((fn) => fn(new Uint8Array(bytes)));
      window.link = await connect(emulator, { relay, lan, transport, token, log: console.log });
      return window.link.transport;
    },
    { relay: RELAY, lan: LAN, transport, token: TOKEN },
  );
  assert.equal(got, transport, `${name} is on ${transport}`);
  return {
    name,
    mac: mac(n),
    page,
    async send(f) {
      await page.evaluate((b) => window.guestSend(b), Array.from(f));
    },
    async take() {
      return page.evaluate(() => window.rx.splice(0));
    },
    async stats() {
      return page.evaluate(() => window.link.stats());
    },
    async close() {
      // Closes the session first: a page that just goes away leaves it to the idle timeout.
      await page.evaluate(() => window.link.close());
      await page.close();
    },
  };
}

/** The Node `ws` client, as v86 itself would connect. */
async function wsPeer(name, n) {
  const ws = new WebSocket(info.websocket);
  ws.binaryType = "nodebuffer";
  const rx = [];
  ws.on("message", (data, binary) => binary && rx.push(Array.from(data)));
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  return {
    name,
    mac: mac(n),
    ws,
    async send(f) {
      ws.send(f);
    },
    async take() {
      return rx.splice(0);
    },
  };
}

// Only the test's own EtherType is counted: a namespace on the LAN may send IPv6 chatter.
const ours = (frames) => frames.filter((f) => f[12] === 0x88 && f[13] === 0xb5);

/** Waits until every peer has received exactly its expected frames (by tag), nothing else. */
async function expectExactly(peers, expected, what) {
  const got = new Map(peers.map((p) => [p.name, []]));
  const deadline = Date.now() + 10000;
  for (;;) {
    for (const p of peers) got.get(p.name).push(...ours(await p.take()));
    const complete = peers.every((p) => got.get(p.name).length >= expected.get(p.name).length);
    if (complete || Date.now() > deadline) break;
    await sleep(50);
  }
  await sleep(300); // anything extra or duplicated shows up now
  for (const p of peers) got.get(p.name).push(...ours(await p.take()));
  for (const p of peers) {
    const want = expected.get(p.name);
    const have = got.get(p.name);
    const wantTags = want.map(tagOf).sort((a, b) => a - b);
    const haveTags = have.map(tagOf).sort((a, b) => a - b);
    assert.deepEqual(haveTags, wantTags, `${what}: ${p.name} receives exactly its frames`);
    const byTag = new Map(want.map((f) => [tagOf(f), f]));
    for (const f of have) {
      assert.deepEqual(Uint8Array.from(f), byTag.get(tagOf(f)), `${what}: frame ${tagOf(f)} intact`);
    }
  }
}

async function exchange(peers) {
  // Learning: each peer broadcasts once, every other peer hears it.
  let expected = new Map(peers.map((p) => [p.name, []]));
  for (const [i, p] of peers.entries()) {
    const f = frame([0xff, 0xff, 0xff, 0xff, 0xff, 0xff], p.mac, 60, 1 + i);
    await p.send(f);
    for (const q of peers) if (q !== p) expected.get(q.name).push(f);
  }
  await expectExactly(peers, expected, "broadcasts");
  // Every ordered pair, every size.
  expected = new Map(peers.map((p) => [p.name, []]));
  let tag = 1000;
  let sent = 0;
  for (const a of peers) {
    for (const b of peers) {
      if (a === b) continue;
      for (const size of SIZES) {
        const f = frame(b.mac, a.mac, size, tag++);
        await a.send(f);
        expected.get(b.name).push(f);
        sent++;
      }
    }
  }
  await expectExactly(peers, expected, "unicast between every pair");
  console.log(`ok: ${sent} unicast frames between ${peers.map((p) => p.name).join(", ")}`);
}

async function bench(transport, n) {
  const a = await pagePeer(`bench-${transport}-a`, transport, 0x20 + 2 * n);
  const b = await pagePeer(`bench-${transport}-b`, transport, 0x21 + 2 * n);
  // B echoes every frame back to its sender; A measures.
  await b.page.evaluate(() => {
    window.onFrame = (f) => {
      const back = new Uint8Array(f);
      back.set(f.subarray(6, 12), 0);
      back.set(f.subarray(0, 6), 6);
      window.guestSend(back);
    };
  });
  await a.send(frame([0xff, 0xff, 0xff, 0xff, 0xff, 0xff], a.mac, 60, 1));
  await sleep(300);
  await a.take();
  const rtt = await a.page.evaluate(
    async ({ dst, src }) => {
      const mk = (size, tag) => {
        const f = new Uint8Array(size);
        f.set(dst, 0);
        f.set(src, 6);
        f[12] = 0x88;
        f[13] = 0xb5;
        new DataView(f.buffer).setUint32(14, tag);
        return f;
      };
      const tagOf = (f) => new DataView(f.buffer, f.byteOffset).getUint32(14);
      const pending = new Map();
      window.onFrame = (f) => pending.get(tagOf(f))?.();
      const rtts = [];
      let lost = 0;
      for (let i = 0; i < 300; i++) {
        const tag = 100000 + i;
        const done = new Promise((resolve) => pending.set(tag, () => resolve(true)));
        const t0 = performance.now();
        window.guestSend(mk(60, tag));
        const ok = await Promise.race([done, new Promise((r) => setTimeout(() => r(false), 1000))]);
        if (ok) rtts.push(performance.now() - t0);
        else lost++;
      }
      rtts.sort((x, y) => x - y);
      const q = (p) => rtts[Math.min(rtts.length - 1, Math.floor(p * rtts.length))];
      // Throughput: 1514-byte frames echoed back, at most 64 in flight (a window, so the
      // figure is what the path sustains rather than how fast queues overflow), for 3 s.
      let back = 0;
      let sent = 0;
      let inflight = 0;
      let running = true;
      const pump = () => {
        while (running && inflight < 64) {
          window.guestSend(mk(1514, 200000 + sent++));
          inflight++;
        }
      };
      window.onFrame = () => {
        back++;
        inflight--;
        pump();
      };
      let lastBack = 0;
      // A lost frame never comes back: after 25 ms without progress, stop waiting for it.
      const stall = setInterval(() => {
        if (back === lastBack) {
          inflight = 0;
          pump();
        }
        lastBack = back;
      }, 25);
      const t0 = performance.now();
      pump();
      await new Promise((r) => setTimeout(r, 3000));
      running = false;
      const secs = (performance.now() - t0) / 1000;
      clearInterval(stall);
      await new Promise((r) => setTimeout(r, 300));
      return {
        rtt_ms_p50: q(0.5),
        rtt_ms_p99: q(0.99),
        rtt_lost: lost,
        round_trip_fps: Math.round(back / secs),
        relayed_fps: Math.round((2 * back) / secs),
        loss_pct: Math.round((1000 * (sent - back)) / sent) / 10,
      };
    },
    { dst: b.mac, src: a.mac },
  );
  console.log(`BENCH ${JSON.stringify({ transport, frame_bytes_throughput: 1514, ...rtt })}`);
  await a.close();
  await b.close();
}

/** A page pings a Linux namespace on the LAN (ARP, then ICMP echo), as a guest would. */
async function pingFromPage(peer, target) {
  const result = await peer.page.evaluate(
    async ({ src, target }) => {
      const ip = (s) => s.split(".").map(Number);
      const me = ip("10.0.2.78");
      const them = ip(target);
      const checksum = (b) => {
        let sum = 0;
        for (let i = 0; i < b.length; i += 2) sum += (b[i] << 8) | (b[i + 1] ?? 0);
        while (sum > 0xffff) sum = (sum & 0xffff) + (sum >> 16);
        return ~sum & 0xffff;
      };
      const wait = (match, ms) =>
        new Promise((resolve) => {
          const timer = setTimeout(() => resolve(null), ms);
          window.onFrame = (f) => {
            if (match(f)) {
              clearTimeout(timer);
              resolve(f);
            }
          };
        });
      // ARP who-has target tell me.
      const arp = new Uint8Array(60);
      arp.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 0);
      arp.set(src, 6);
      arp.set([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1], 12);
      arp.set(src, 22);
      arp.set(me, 28);
      arp.set(them, 38);
      const isReply = (f) =>
        f[12] === 0x08 && f[13] === 0x06 && f[21] === 2 && f.subarray(28, 32).join() === them.join();
      let reply = null;
      for (let i = 0; i < 10 && !reply; i++) {
        const pending = wait(isReply, 1000);
        window.guestSend(arp);
        reply = await pending;
      }
      if (!reply) return { error: "no ARP reply" };
      const dst = Array.from(reply.subarray(22, 28));
      const rtts = [];
      for (let seq = 1; seq <= 3; seq++) {
        const f = new Uint8Array(14 + 20 + 8 + 32);
        f.set(dst, 0);
        f.set(src, 6);
        f.set([0x08, 0x00], 12);
        const ipHeader = [0x45, 0, 0, 60, 0, seq, 0x40, 0, 64, 1, 0, 0, ...me, ...them];
        f.set(ipHeader, 14);
        const c = checksum(f.subarray(14, 34));
        f[24] = c >> 8;
        f[25] = c & 0xff;
        f.set([8, 0, 0, 0, 0x12, 0x34, 0, seq], 34);
        for (let i = 42; i < f.length; i++) f[i] = i;
        const ic = checksum(f.subarray(34));
        f[36] = ic >> 8;
        f[37] = ic & 0xff;
        const isEcho = (r) => r[12] === 0x08 && r[13] === 0 && r[23] === 1 && r[34] === 0 && r[41] === seq;
        const pending = wait(isEcho, 2000);
        const t0 = performance.now();
        window.guestSend(f);
        if (!(await pending)) return { error: `no echo reply to seq ${seq}` };
        rtts.push(performance.now() - t0);
      }
      window.onFrame = null;
      return { rtts };
    },
    { src: peer.mac, target },
  );
  assert.ok(!result.error, `page pings ${target}: ${result.error}`);
  console.log(`ok: ${peer.name} pinged namespace ${target}: ${result.rtts.map((r) => r.toFixed(1)).join(", ")} ms`);
}

let failed = false;
try {
  const peers = [await pagePeer("page-webtransport", "webtransport", 1), await wsPeer("node-websocket", 2)];
  if (info.webrtc) {
    peers.push(await pagePeer("page-webrtc", "webrtc", 3));
  } else {
    console.log("SKIPPED webrtc page: /net/info offers no webrtc (no WebRTC listener on this relay)");
  }
  await exchange(peers);
  if (process.env.PING_IP) {
    for (const p of peers) if (p.page) await pingFromPage(p, process.env.PING_IP);
  } else {
    console.log("SKIPPED ping from a page: no namespace on the LAN (PING_IP unset)");
  }
  const s = await peers[0].stats();
  console.log("page-webtransport stats:", JSON.stringify(s));
  assert.ok(s.fragmentsOut > 0, "the page fragmented frames over 1210 bytes");
  assert.equal(s.reassemblyDrops, 0);
  for (const p of peers) if (p.page) await p.close();
  for (const p of peers) if (p.ws) p.ws.close();
  if (process.env.BENCH === "1") {
    await bench("webtransport", 0);
    if (info.webrtc) await bench("webrtc", 1);
    await bench("websocket", 2);
  }
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser.close();
  server.close();
}
process.exit(failed ? 1 : 0);
