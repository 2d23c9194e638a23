// relay-client.js: plugs a v86 emulator into a v86-relay LAN over WebTransport, WebRTC or
// WebSocket. Plain v86 users do not need it (v86's own `relay_url` speaks WebSocket).
//
//   import { connect } from "./relay-client.js";
//   const link = await connect(emulator, { relay: "https://HOST:8086", lan: "physics-101" });
//   link.stats();  // { transport, framesIn, framesOut, bytesIn, bytesOut, drops, rttMs, ... }
//   link.close();
//
// `emulator` only needs v86's two bus hooks: `add_listener("net0-send", fn)` (frames from the
// guest) and `bus.send("net0-receive", Uint8Array)` (frames to the guest), so tests and other
// programs can pass a small object instead of a V86 instance.
//
// Wire formats (docs/architecture.md): WebSocket and WebRTC carry one frame per message. WebTransport
// datagrams start with 0x00 (whole frame) or 0x01 + id u16 BE + index u8 + count u8 (2..=64)
// + bytes, because Chromium refuses datagrams over `maxDatagramSize` (1211 there).

const WHOLE = 0x00;
const FRAGMENT = 0x01;
const HEADER = 5;
const MAX_FRAGMENTS = 64;
const REASSEMBLY_TIMEOUT_MS = 1000;
const MAX_PENDING = 64;

/** Splits frames into datagrams of at most `max` bytes (read from the session each time). */
export class Fragmenter {
  constructor() {
    this.nextId = 0;
  }

  /** Returns an array of datagrams, or null if 64 fragments cannot carry the frame. */
  encode(frame, max) {
    if (frame.length < max) {
      const d = new Uint8Array(frame.length + 1);
      d[0] = WHOLE;
      d.set(frame, 1);
      return [d];
    }
    const chunk = max - HEADER;
    if (chunk <= 0) return null;
    const count = Math.ceil(frame.length / chunk);
    if (count > MAX_FRAGMENTS) return null;
    const id = this.nextId;
    this.nextId = (this.nextId + 1) & 0xffff;
    const out = [];
    for (let i = 0; i < count; i++) {
      const part = frame.subarray(i * chunk, Math.min(frame.length, (i + 1) * chunk));
      const d = new Uint8Array(HEADER + part.length);
      d[0] = FRAGMENT;
      d[1] = id >> 8;
      d[2] = id & 0xff;
      d[3] = i;
      d[4] = count;
      d.set(part, HEADER);
      out.push(d);
    }
    return out;
  }
}

/** Reassembles fragments with bounded memory; drops are counted in `drops`. */
export class Reassembler {
  constructor(maxFrame = 65549) {
    this.maxFrame = maxFrame;
    this.pending = new Map(); // id -> { count, parts, have, bytes, partLen, lastLen, at }
    this.drops = 0;
  }

  /** Returns a whole frame, or null (stored or dropped). */
  receive(d, now = performance.now()) {
    this.expire(now);
    if (d.length >= 1 && d[0] === WHOLE) return d.subarray(1);
    if (d.length < HEADER + 1 || d[0] !== FRAGMENT) {
      this.drops++;
      return null;
    }
    const id = (d[1] << 8) | d[2];
    const index = d[3];
    const count = d[4];
    const part = d.subarray(HEADER);
    if (count < 2 || count > MAX_FRAGMENTS || index >= count) {
      this.drops++;
      return null;
    }
    let p = this.pending.get(id);
    if (p && p.count !== count) {
      this.pending.delete(id);
      this.drops++;
      return null;
    }
    if (!p) {
      p = { count, parts: new Array(count), have: 0, bytes: 0, partLen: 0, lastLen: 0, at: now };
      this.pending.set(id, p);
      while (this.pending.size > MAX_PENDING) {
        this.pending.delete(this.pending.keys().next().value);
        this.drops++;
      }
    }
    if (p.parts[index]) {
      this.drops++;
      return null;
    }
    const last = index === count - 1;
    if (last) p.lastLen = part.length;
    else if (p.partLen === 0) p.partLen = part.length;
    const bad =
      (!last && part.length !== p.partLen) ||
      (p.partLen && p.lastLen > p.partLen) ||
      (count - 1) * (p.partLen || 1) + (p.lastLen || 1) > this.maxFrame;
    if (bad) {
      this.pending.delete(id);
      this.drops++;
      return null;
    }
    p.parts[index] = part.slice();
    p.have++;
    p.bytes += part.length;
    if (p.have < count) return null;
    this.pending.delete(id);
    const frame = new Uint8Array(p.bytes);
    let at = 0;
    for (const x of p.parts) {
      frame.set(x, at);
      at += x.length;
    }
    return frame;
  }

  expire(now) {
    for (const [id, p] of this.pending) {
      if (now - p.at >= REASSEMBLY_TIMEOUT_MS) {
        this.pending.delete(id);
        this.drops++;
      }
    }
  }
}

function hexToBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}

/**
 * GET /net/info for `lan` from the relay at `relay` (http(s)://HOST:PORT). A join `token`
 * (for a relay with [auth]) comes back on every transport's URL.
 */
export async function netInfo(relay, lan = "default", token = null) {
  const url = new URL("/net/info", relay);
  url.searchParams.set("lan", lan);
  if (token) url.searchParams.set("token", token);
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) {
    throw new Error(`${url}: ${response.status} ${(await response.text()).trim()}`);
  }
  return response.json();
}

// Each opener returns { send(frame), close(), rtt(): Promise<number|null>, closed: Promise }.

async function openWebTransport(info, onFrame, counters) {
  if (!info.webtransport) throw new Error("the relay offers no WebTransport");
  if (typeof WebTransport === "undefined") throw new Error("this browser has no WebTransport");
  const hashes = info.webtransport.certificate_hashes || [];
  const options = hashes.length
    ? { serverCertificateHashes: hashes.map((h) => ({ algorithm: "sha-256", value: hexToBytes(h) })) }
    : {};
  const wt = new WebTransport(info.webtransport.url, options);
  await wt.ready;
  const writer = wt.datagrams.writable.getWriter();
  const reader = wt.datagrams.readable.getReader();
  const fragmenter = new Fragmenter();
  const reassembler = new Reassembler();
  (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      const frame = reassembler.receive(value);
      counters.reassemblyDrops = reassembler.drops;
      if (frame) onFrame(frame);
    }
  })().catch(() => {});
  const timer = setInterval(() => reassembler.expire(performance.now()), 500);
  const closed = wt.closed.catch(() => {}).finally(() => clearInterval(timer));
  return {
    kind: "webtransport",
    send(frame) {
      // The limit can change over a session's life: read it for every frame.
      const datagrams = fragmenter.encode(frame, wt.datagrams.maxDatagramSize);
      if (!datagrams) return false;
      for (const d of datagrams) writer.write(d).catch(() => {});
      if (datagrams.length > 1) counters.fragmentsOut += datagrams.length;
      return true;
    },
    close() {
      try {
        wt.close();
      } catch {}
    },
    async rtt() {
      if (typeof wt.getStats !== "function") return null;
      const s = await wt.getStats();
      const v = s.smoothedRtt ?? s.smoothed_rtt;
      return typeof v === "number" ? v : null;
    },
    closed,
  };
}

async function openWebRtc(info, onFrame) {
  if (!info.webrtc) throw new Error("the relay offers no WebRTC");
  const pc = new RTCPeerConnection();
  const dc = pc.createDataChannel("v86-relay", { ordered: false, maxRetransmits: 0 });
  dc.binaryType = "arraybuffer";
  await pc.setLocalDescription(await pc.createOffer());
  // Non-trickle: the relay answers once, so the offer carries every candidate.
  if (pc.iceGatheringState !== "complete") {
    await new Promise((resolve) => {
      const check = () => pc.iceGatheringState === "complete" && resolve();
      pc.addEventListener("icegatheringstatechange", check);
      setTimeout(resolve, 3000);
    });
  }
  // text/plain keeps this a simple CORS request (no preflight); the body is the SDP.
  const response = await fetch(info.webrtc.offer_url, {
    method: "POST",
    headers: { "content-type": "text/plain" },
    body: pc.localDescription.sdp,
  });
  if (!response.ok) {
    pc.close();
    throw new Error(`WebRTC offer refused: ${response.status} ${(await response.text()).trim()}`);
  }
  await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
  await new Promise((resolve, reject) => {
    if (dc.readyState === "open") return resolve();
    dc.onopen = resolve;
    dc.onclose = () => reject(new Error("DataChannel closed before opening"));
    setTimeout(() => reject(new Error("DataChannel did not open within 10 s")), 10000);
  }).catch((e) => {
    pc.close();
    throw e;
  });
  dc.onmessage = (e) => onFrame(new Uint8Array(e.data));
  const closed = new Promise((resolve) => {
    dc.addEventListener("close", resolve);
    pc.addEventListener("connectionstatechange", () => {
      if (["failed", "closed"].includes(pc.connectionState)) resolve();
    });
  });
  return {
    kind: "webrtc",
    send(frame) {
      if (dc.readyState !== "open") return false;
      dc.send(frame);
      return true;
    },
    close() {
      pc.close();
    },
    async rtt() {
      const stats = await pc.getStats();
      for (const s of stats.values()) {
        if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime != null) {
          return s.currentRoundTripTime * 1000;
        }
      }
      return null;
    },
    closed,
  };
}

async function openWebSocket(info, onFrame) {
  const ws = new WebSocket(info.websocket);
  ws.binaryType = "arraybuffer";
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error(`WebSocket ${info.websocket} failed`));
  });
  ws.onmessage = (e) => {
    if (e.data instanceof ArrayBuffer) onFrame(new Uint8Array(e.data));
  };
  const closed = new Promise((resolve) => ws.addEventListener("close", resolve));
  return {
    kind: "websocket",
    send(frame) {
      if (ws.readyState !== WebSocket.OPEN) return false;
      ws.send(frame);
      return true;
    },
    close() {
      ws.close();
    },
    async rtt() {
      return null;
    },
    closed,
  };
}

const OPENERS = { webtransport: openWebTransport, webrtc: openWebRtc, websocket: openWebSocket };
// By what a guest gets (loadtest/transport-bench.sh, docs/benchmarks.md): WebSocket
// downloads fastest in every run; WebRTC and WebTransport download at 0.6x to 0.95x of it
// and upload about as fast, neither ahead of the other in every run. Each is only tried if
// the one before fails.
const AUTO_ORDER = ["websocket", "webrtc", "webtransport"];

/**
 * Connects `emulator` to LAN `lan` of the relay at `relay`. Resolves once the first transport
 * is up; reconnects with exponential backoff (0.5 s to 10 s) after a drop.
 * options.transport: "auto" (WebSocket, then WebRTC, then WebTransport) or one of them.
 */
export async function connect(emulator, options = {}) {
  const relay = options.relay || location.origin;
  const lan = options.lan || "default";
  const token = options.token || null;
  const wanted = options.transport || "auto";
  const order = wanted === "auto" ? AUTO_ORDER : [wanted];
  if (!order.every((t) => OPENERS[t])) {
    throw new Error(`unknown transport ${wanted}: use auto, webtransport, webrtc or websocket`);
  }
  const log = options.log || (() => {});
  const counters = {
    framesIn: 0,
    framesOut: 0,
    bytesIn: 0,
    bytesOut: 0,
    drops: 0,
    fragmentsOut: 0,
    reassemblyDrops: 0,
    reconnects: 0,
  };
  let link = null;
  let stopped = false;
  const deliver = (frame) => {
    counters.framesIn++;
    counters.bytesIn += frame.length;
    emulator.bus.send("net0-receive", frame);
  };
  emulator.add_listener("net0-send", (frame) => {
    const data = frame instanceof Uint8Array ? frame : new Uint8Array(frame);
    if (link && link.send(data)) {
      counters.framesOut++;
      counters.bytesOut += data.length;
    } else {
      counters.drops++;
    }
  });

  async function open() {
    const info = await netInfo(relay, lan, token);
    const errors = [];
    for (const kind of order) {
      try {
        return await OPENERS[kind](info, deliver, counters);
      } catch (e) {
        errors.push(`${kind}: ${e.message || e}`);
        log(`relay-client: ${kind} failed: ${e.message || e}`);
      }
    }
    throw new Error(`no transport reached ${relay} (LAN ${lan}): ${errors.join("; ")}`);
  }

  async function keep(first) {
    let delay = 500;
    let current = first;
    while (!stopped) {
      link = current;
      await current.closed;
      link = null;
      if (stopped) return;
      for (;;) {
        await new Promise((r) => setTimeout(r, delay));
        if (stopped) return;
        try {
          current = await open();
          counters.reconnects++;
          delay = 500;
          break;
        } catch (e) {
          log(`relay-client: reconnect failed: ${e.message || e}`);
          delay = Math.min(delay * 2, 10000);
        }
      }
    }
  }

  const first = await open();
  link = first;
  keep(first);
  return {
    get transport() {
      return link ? link.kind : null;
    },
    async stats() {
      return { transport: link ? link.kind : null, ...counters, rttMs: link ? await link.rtt() : null };
    },
    close() {
      stopped = true;
      if (link) link.close();
    },
  };
}
