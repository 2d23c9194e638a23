// Wisp server benchmark: v86-relay's /wisp/ beside wisp-js's own server (wisp-js-server from
// @mercuryworkshop/wisp-js), both on loopback, in the same run, with the same client
// (wisp-js's, Wisp v1 as v86 speaks it) and the same TCP target. docs/benchmarks.md has
// the results and the command:
//
//   ulimit -n 65536; node loadtest/wisp-bench.mjs --relay target/release/v86-relay
//
// Options: --bytes N (per throughput run, default 64 MiB), --rtts N (default 2000),
// --sessions N --per-session N (default 40 x 250 = 10,000 streams), --only relay|wisp-js.
// Prints one JSON line per server and a Markdown table. Needs tests/js/node_modules
// (npm ci in tests/js).
//
// The target (a child process, so it does not share the client's event loop) reads one
// mode byte per connection: 'U' + u64 length: swallow that many bytes, answer one byte;
// 'D' + u64 length: send that many bytes; 'E': echo.

import { spawn } from "node:child_process";
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const modules = path.join(here, "../tests/js/node_modules");
const CHUNK = 16 * 1024;

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}

if (process.argv[2] === "--target") {
  target();
} else {
  await main();
}

function target() {
  const server = net.createServer((sock) => {
    sock.setNoDelay(true);
    let head = Buffer.alloc(0);
    let mode = null;
    let left = 0n;
    sock.on("error", () => {});
    sock.on("data", (data) => {
      if (mode === "E") return sock.write(data);
      if (mode === "U") {
        left -= BigInt(data.length);
        if (left <= 0n) sock.end(Buffer.from([1]));
        return;
      }
      head = Buffer.concat([head, data]);
      if (head[0] === 0x45) {
        mode = "E";
        if (head.length > 1) sock.write(head.subarray(1));
        return;
      }
      if (head.length < 9) return;
      mode = String.fromCharCode(head[0]);
      left = head.readBigUInt64LE(1);
      if (mode === "U") {
        left -= BigInt(head.length - 9);
        if (left <= 0n) sock.end(Buffer.from([1]));
      } else if (mode === "D") {
        const block = Buffer.alloc(CHUNK, 0x5a);
        const pump = () => {
          while (left > 0n) {
            const n = left < BigInt(CHUNK) ? Number(left) : CHUNK;
            left -= BigInt(n);
            if (!sock.write(n === CHUNK ? block : block.subarray(0, n))) return sock.once("drain", pump);
          }
          sock.end();
        };
        pump();
      }
    });
  });
  server.listen(0, "127.0.0.1", () => process.stdout.write(`${server.address().port}\n`));
}

function rssKiB(pid) {
  const m = readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+) kB/);
  return Number(m[1]);
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitListening(port) {
  for (let i = 0; i < 200; i++) {
    const ok = await new Promise((r) => {
      const c = net.connect(port, "127.0.0.1", () => (c.destroy(), r(true)));
      c.on("error", () => r(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on ${port}`);
}

function header(mode, length) {
  const b = Buffer.alloc(9);
  b[0] = mode.charCodeAt(0);
  b.writeBigUInt64LE(BigInt(length), 1);
  return b;
}

async function connect(url) {
  const { client } = await import(path.join(modules, "@mercuryworkshop/wisp-js/src/entrypoints/client.mjs"));
  return await new Promise((resolve, reject) => {
    const conn = new client.ClientConnection(url, { wisp_version: 1 });
    conn.onopen = () => resolve(conn);
    conn.onerror = () => reject(new Error(`cannot open ${url}`));
  });
}

/** Resolves with the stream once `first` came back (the stream is open end to end). */
function stream(conn, port, onmessage) {
  const s = conn.create_stream("127.0.0.1", port, "tcp");
  s.onmessage = onmessage;
  s.onclose = () => {};
  return s;
}

async function upload(url, port, bytes) {
  const conn = await connect(url);
  const t0 = process.hrtime.bigint();
  await new Promise((resolve) => {
    const s = stream(conn, port, () => resolve());
    s.send(header("U", bytes));
    const block = new Uint8Array(CHUNK).fill(0x61);
    for (let sent = 0; sent < bytes; sent += CHUNK) s.send(block.subarray(0, Math.min(CHUNK, bytes - sent)));
  });
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  conn.close();
  return bytes / secs / 1048576;
}

async function download(url, port, bytes) {
  const conn = await connect(url);
  const t0 = process.hrtime.bigint();
  await new Promise((resolve) => {
    let got = 0;
    const s = stream(conn, port, (data) => {
      got += data.length;
      if (got >= bytes) resolve();
    });
    s.send(header("D", bytes));
  });
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  conn.close();
  return bytes / secs / 1048576;
}

async function roundTrips(url, port, count) {
  const conn = await connect(url);
  let wake;
  const s = stream(conn, port, () => wake());
  const once = () => new Promise((r) => (wake = r));
  s.send(Buffer.from("E"));
  const times = [];
  for (let i = 0; i < count + 50; i++) {
    const t0 = process.hrtime.bigint();
    const back = once();
    s.send(Buffer.from([i & 0xff]));
    await back;
    // The first 50 warm up both ends (JIT, connection setup).
    if (i >= 50) times.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  conn.close();
  times.sort((a, b) => a - b);
  return { median_us: times[times.length >> 1], p99_us: times[Math.floor(times.length * 0.99)] };
}

/** Opens sessions x perSession echo streams, each proven open by one echoed byte. */
async function memoryPerStream(url, port, pid, sessions, perSession) {
  const conns = [];
  for (let i = 0; i < sessions; i++) conns.push(await connect(url));
  await new Promise((r) => setTimeout(r, 1000));
  const before = rssKiB(pid);
  const t0 = Date.now();
  const opened = [];
  for (const conn of conns) {
    for (let j = 0; j < perSession; j++) {
      opened.push(
        new Promise((resolve, reject) => {
          const s = stream(conn, port, () => resolve(s));
          s.onclose = (reason) => reject(new Error(`a stream closed before its echo (reason ${reason})`));
          s.send(Buffer.from("Ex"));
        }),
      );
    }
  }
  await Promise.all(opened);
  const openMs = Date.now() - t0;
  await new Promise((r) => setTimeout(r, 1000));
  const after = rssKiB(pid);
  for (const conn of conns) conn.close();
  const streams = sessions * perSession;
  return { streams, open_ms: openMs, rss_before_kib: before, rss_after_kib: after, bytes_per_stream: Math.round(((after - before) * 1024) / streams) };
}

function start(cmd, args, opts = {}) {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "inherit"], ...opts });
  return child;
}

async function main() {
  const relayBin = arg("relay", path.join(here, "../target/release/v86-relay"));
  const bytes = Number(arg("bytes", 64 * 1048576));
  const rtts = Number(arg("rtts", 2000));
  const sessions = Number(arg("sessions", 40));
  const perSession = Number(arg("per-session", 250));
  const only = arg("only", null);
  const children = [];
  const dir = mkdtempSync(path.join(os.tmpdir(), "wisp-bench-"));
  try {
    const tgt = start(process.execPath, [fileURLToPath(import.meta.url), "--target"]);
    children.push(tgt);
    const port = await new Promise((r) => tgt.stdout.once("data", (d) => r(Number(String(d).trim()))));

    const relayPort = await freePort();
    const config = path.join(dir, "relay.toml");
    writeFileSync(
      config,
      `[nat]\nallow = ["127.0.0.1/32:${port}"]\n[wisp]\nmax_streams_per_session = ${Math.max(perSession, 256)}\nmax_streams_per_ip = ${sessions * perSession + 1024}\n`,
    );
    const relay = start(relayBin, ["--config", config, "--listen", `127.0.0.1:${relayPort}`, "--metrics-listen", "off", "--webtransport-listen", "off", "--webrtc-listen", "off", "--log", "warn"]);
    children.push(relay);
    const jsPort = await freePort();
    const options = JSON.stringify({ allow_loopback_ips: true, allow_private_ips: true });
    const js = start(process.execPath, [path.join(modules, "@mercuryworkshop/wisp-js/src/bin/server_cli.mjs"), "-H", "127.0.0.1", "-P", String(jsPort), "-L", "NONE", "-O", options]);
    children.push(js);
    await waitListening(relayPort);
    await waitListening(jsPort);

    const servers = [
      { name: "v86-relay", url: `ws://127.0.0.1:${relayPort}/wisp/`, pid: relay.pid },
      { name: "wisp-js", url: `ws://127.0.0.1:${jsPort}/`, pid: js.pid },
    ].filter((s) => !only || s.name.includes(only));
    const rows = [];
    for (const s of servers) {
      const r = { server: s.name };
      const phase = (what) => console.error(`${s.name}: ${what}`);
      phase("upload");
      r.upload_mib_s = +(await upload(s.url, port, bytes)).toFixed(1);
      phase("download");
      r.download_mib_s = +(await download(s.url, port, bytes)).toFixed(1);
      phase("round trips");
      Object.assign(r, await roundTrips(s.url, port, rtts));
      r.idle_rss_kib = rssKiB(s.pid);
      phase("streams");
      Object.assign(r, await memoryPerStream(s.url, port, s.pid, sessions, perSession));
      console.log(JSON.stringify(r));
      rows.push(r);
    }
    console.log("\n| server | upload MiB/s | download MiB/s | 1-byte RTT median / p99 (µs) | streams | RSS before → after (MiB) | per stream |");
    console.log("| --- | --- | --- | --- | --- | --- | --- |");
    for (const r of rows) {
      const mib = (k) => (k / 1024).toFixed(1);
      console.log(`| ${r.server} | ${r.upload_mib_s} | ${r.download_mib_s} | ${r.median_us.toFixed(0)} / ${r.p99_us.toFixed(0)} | ${r.streams} | ${mib(r.rss_before_kib)} → ${mib(r.rss_after_kib)} | ${(r.bytes_per_stream / 1024).toFixed(1)} KiB |`);
    }
  } finally {
    // Only the processes this script started, by their handles.
    for (const c of children) c.kill();
    rmSync(dir, { recursive: true, force: true });
  }
  process.exit(0);
}
