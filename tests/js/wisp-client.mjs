// A third-party Wisp client (MercuryWorkshop's @mercuryworkshop/wisp-js) against the relay's
// /wisp/ endpoint, run by relay/tests/wisp.rs:
//
//   node wisp-client.mjs CONFIG.json FRAMES.log
//
// CONFIG: {"url": "ws://127.0.0.1:PORT/wisp/", "echo": "198.18.N.2", "tcp_port": 7, "udp_port": 7,
//          "parallel": 200, "blocked": ["127.0.0.1:80", ...], "refused": ["198.18.N.2:9"]}
// For v1 and v2 it opens a TCP and a UDP stream to the echo servers, then `parallel` TCP
// streams at once (each echoing 32 KiB of its own bytes), then one stream to every `blocked`
// and `refused` destination. Every frame received and sent is logged to FRAMES (one line:
// "v<version> <in|out> <type> <stream id> [close reason]") so the Rust side can check the
// wire; the summary is one JSON line on stdout. Exits non-zero on any failure.

import { readFileSync, writeFileSync } from "node:fs";
import { client } from "@mercuryworkshop/wisp-js/client";

const [configPath, framesPath] = process.argv.slice(2);
const config = JSON.parse(readFileSync(configPath, "utf8"));
const frames = [];
const TIMEOUT_MS = 30000;

function within(ms, promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function logFrame(version, dir, bytes) {
  const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (b.length < 5) {
    frames.push(`v${version} ${dir} short 0`);
    return;
  }
  const type = b[0];
  const id = view.getUint32(1, true);
  const reason = type === 0x04 && b.length > 5 ? ` ${b[5]}` : "";
  frames.push(`v${version} ${dir} ${type} ${id}${reason}`);
}

function open(version) {
  return within(TIMEOUT_MS, new Promise((resolve, reject) => {
    const conn = new client.ClientConnection(config.url, { wisp_version: version });
    // The library sets ws.onmessage in its constructor; wrap it to see every frame.
    const ws = conn.ws;
    const onmessage = ws.onmessage;
    ws.onmessage = (event) => {
      logFrame(version, "in", event.data);
      onmessage(event);
    };
    const send = ws.send.bind(ws);
    ws.send = (data) => {
      logFrame(version, "out", data);
      send(data);
    };
    conn.onopen = () => resolve(conn);
    conn.onerror = () => reject(new Error(`v${version}: websocket error`));
    conn.onclose = () => reject(new Error(`v${version}: closed before open`));
  }), `v${version} open`);
}

// Deterministic bytes per stream, so a mixed-up echo is caught.
function pattern(seed, length) {
  const out = new Uint8Array(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

// Sends `data` in chunks on a TCP stream and resolves when the same bytes came back.
function echoTcp(conn, seed, length, chunk) {
  const data = pattern(seed, length);
  return new Promise((resolve, reject) => {
    const stream = conn.create_stream(config.echo, config.tcp_port, "tcp");
    const got = new Uint8Array(length);
    let have = 0;
    stream.onmessage = (bytes) => {
      if (have + bytes.length > length) {
        return reject(new Error(`stream ${stream.stream_id}: too many bytes back`));
      }
      got.set(bytes, have);
      have += bytes.length;
      if (have === length) {
        for (let i = 0; i < length; i++) {
          if (got[i] !== data[i]) {
            return reject(new Error(`stream ${stream.stream_id}: byte ${i} differs`));
          }
        }
        stream.close(0x02);
        resolve(stream.stream_id);
      }
    };
    stream.onclose = (reason) => {
      if (have !== length) {
        reject(new Error(`stream ${stream.stream_id}: closed (${reason}) after ${have} of ${length} bytes`));
      }
    };
    for (let off = 0; off < length; off += chunk) {
      stream.send(data.subarray(off, Math.min(off + chunk, length)));
    }
  });
}

function echoUdp(conn, seed) {
  return new Promise((resolve, reject) => {
    const stream = conn.create_stream(config.echo, config.udp_port, "udp");
    const datagram = pattern(seed, 1200);
    let tries = 0;
    const timer = setInterval(() => {
      if (++tries > 20) {
        clearInterval(timer);
        reject(new Error("no UDP echo"));
      } else {
        stream.send(datagram);
      }
    }, 250);
    stream.onmessage = (bytes) => {
      clearInterval(timer);
      if (bytes.length !== datagram.length || bytes.some((b, i) => b !== datagram[i])) {
        return reject(new Error("UDP echo differs"));
      }
      stream.close(0x02);
      resolve(true);
    };
    stream.onclose = (reason) => {
      clearInterval(timer);
      reject(new Error(`UDP stream closed: ${reason}`));
    };
    stream.send(datagram);
  });
}

// Resolves with the CLOSE reason the server gives a stream to `target` ("host:port").
function closeReason(conn, target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
  return new Promise((resolve) => {
    const stream = conn.create_stream(host, port, "tcp");
    stream.onmessage = () => {};
    stream.onclose = (reason) => resolve(reason);
    // Data before the verdict: it must be dropped, never answered after the CLOSE.
    stream.send(new Uint8Array([1, 2, 3]));
  });
}

async function run(version) {
  const conn = await open(version);
  const result = { version: conn.wisp_version, info: conn.info_received, udp: conn.udp_enabled };
  result.tcp = await within(TIMEOUT_MS, echoTcp(conn, version, 100000, 4096), "tcp echo") > 0;
  result.udp_echo = await within(TIMEOUT_MS, echoUdp(conn, 7 + version), "udp echo");
  const started = Date.now();
  const parallel = [];
  for (let i = 0; i < config.parallel; i++) {
    parallel.push(echoTcp(conn, 1000 * version + i, 32768, 2048));
  }
  result.parallel = (await within(60000, Promise.all(parallel), "parallel streams")).length;
  result.parallel_ms = Date.now() - started;
  result.blocked = [];
  for (const target of config.blocked) {
    result.blocked.push(await within(TIMEOUT_MS, closeReason(conn, target), `close of ${target}`));
  }
  result.refused = [];
  for (const target of config.refused) {
    result.refused.push(await within(TIMEOUT_MS, closeReason(conn, target), `close of ${target}`));
  }
  // Late frames for closed streams would arrive now.
  await new Promise((r) => setTimeout(r, 300));
  conn.close();
  return result;
}

let failed = false;
const results = [];
try {
  for (const version of [1, 2]) {
    results.push(await run(version));
  }
} catch (error) {
  console.error(String(error && error.stack || error));
  failed = true;
}
writeFileSync(framesPath, frames.join("\n") + "\n");
console.log(JSON.stringify({ ok: !failed, results }));
process.exit(failed ? 1 : 0);
