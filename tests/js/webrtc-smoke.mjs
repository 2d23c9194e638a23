// Headless Debian Chromium joins a relay LAN over WebRTC (POST offer, one unordered
// `v86-relay` DataChannel with maxRetransmits 0) while a Node WebSocket client joins the
// same LAN; Ethernet frames of 60, 1211, 1400 and 1514 bytes pass both ways.
//
// usage: node webrtc-smoke.mjs http://127.0.0.1:PORT LAN
// Prints one JSON line with what each side received; exits 1 on any mismatch.
import { chromium } from "playwright-core";
import WebSocket from "ws";

const [base, lan = "t"] = process.argv.slice(2);
if (!base) {
  console.error("usage: node webrtc-smoke.mjs http://127.0.0.1:PORT LAN");
  process.exit(2);
}
const SIZES = [60, 1211, 1400, 1514];
const RTC_MAC = [0x02, 0, 0, 0, 0, 0x01];
const WS_MAC = [0x02, 0, 0, 0, 0, 0x02];

// An Ethernet frame: dst, src, ethertype 0x88b5 (local experimental), a u32 tag, padding.
function frame(dst, src, len, tag) {
  const f = new Uint8Array(len);
  f.set(dst, 0);
  f.set(src, 6);
  f.set([0x88, 0xb5], 12);
  new DataView(f.buffer).setUint32(14, tag);
  return f;
}
const tagOf = (f) => new DataView(f.buffer, f.byteOffset, f.byteLength).getUint32(14);

const timeout = (ms, what) =>
  new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms));

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
let ws;
let failed = false;
try {
  const page = await browser.newPage();
  // Same origin as the offer URL: a page the relay itself serves.
  await page.goto(`${base}/healthz`);
  await page.evaluate(async ({ offerUrl }) => {
    const pc = new RTCPeerConnection();
    const dc = pc.createDataChannel("v86-relay", { ordered: false, maxRetransmits: 0 });
    dc.binaryType = "arraybuffer";
    window.received = [];
    dc.onmessage = (e) => window.received.push(new Uint8Array(e.data));
    window.dc = dc;
    await pc.setLocalDescription(await pc.createOffer());
    // Non-trickle: the offer carries every candidate.
    if (pc.iceGatheringState !== "complete") {
      await new Promise((resolve) => {
        pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && resolve();
      });
    }
    const response = await fetch(offerUrl, {
      method: "POST",
      headers: { "content-type": "application/sdp" },
      body: pc.localDescription.sdp,
    });
    const answer = await response.text();
    if (!response.ok) throw new Error(`offer refused: ${response.status} ${answer}`);
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
    await new Promise((resolve, reject) => {
      dc.onopen = resolve;
      setTimeout(() => reject(new Error(`DataChannel did not open (ICE ${pc.iceConnectionState})`)), 10000);
    });
    window.pc = pc;
  }, { offerUrl: `${base}/net/rtc/offer?lan=${lan}` });

  ws = new WebSocket(`${base.replace(/^http/, "ws")}/lan/${lan}`);
  ws.binaryType = "nodebuffer";
  const atWs = [];
  ws.on("message", (data) => atWs.push(new Uint8Array(data)));
  await Promise.race([new Promise((r) => ws.once("open", r)), timeout(5000, "WebSocket open")]);

  const send = (f) => page.evaluate((bytes) => window.dc.send(new Uint8Array(bytes)), Array.from(f));
  const waitFor = async (what, check) => {
    const deadline = Date.now() + 5000;
    while (!(await check())) {
      if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const pageCount = () => page.evaluate(() => window.received.length);

  // Announce both MACs so the switch learns them.
  await send(frame([0xff, 0xff, 0xff, 0xff, 0xff, 0xff], RTC_MAC, 60, 0));
  await waitFor("WebSocket hears the page", () => atWs.length >= 1);
  ws.send(frame([0xff, 0xff, 0xff, 0xff, 0xff, 0xff], WS_MAC, 60, 1));
  await waitFor("page hears the WebSocket client", async () => (await pageCount()) >= 1);

  for (const [i, len] of SIZES.entries()) {
    await send(frame(WS_MAC, RTC_MAC, len, 10 + i));
    ws.send(frame(RTC_MAC, WS_MAC, len, 20 + i));
  }
  await waitFor("every frame", async () => atWs.length >= 5 && (await pageCount()) >= 5);
  await new Promise((r) => setTimeout(r, 300)); // nothing more may arrive
  const pageGot = await page.evaluate(() =>
    window.received.map((f) => [new DataView(f.buffer).getUint32(14), f.byteLength]));
  const wsGot = atWs.map((f) => [tagOf(f), f.byteLength]);
  const sorted = (a) => a.slice(1).sort((x, y) => x[0] - y[0]);
  const want = (base) => SIZES.map((len, i) => [base + i, len]);
  const result = { page: sorted(pageGot), websocket: sorted(wsGot), pageTotal: pageGot.length, wsTotal: wsGot.length };
  console.log(JSON.stringify(result));
  failed = JSON.stringify(result.page) !== JSON.stringify(want(20))
    || JSON.stringify(result.websocket) !== JSON.stringify(want(10))
    || pageGot.length !== 5 || wsGot.length !== 5;
  await page.evaluate(() => window.pc.close());
} catch (error) {
  console.error(`webrtc-smoke: ${error.message}`);
  failed = true;
} finally {
  ws?.close();
  await browser.close();
}
process.exit(failed ? 1 : 0);
