// Guest download speed through the relay's NAT: the demo guest in v86 (Node, virtio NIC
// with net_device.mtu = MTU) joins LAN V86_RELAY_LAN with ?mtu=MTU (the first join chooses
// the LAN's MTU), takes its lease and downloads URL with busybox wget to /dev/null, RUNS
// times. Prints `GUEST-SPEED mtu=M bytes=B best_mbit=X runs=a,b,...` and `GUEST-SPEED OK`.
// Env: V86_RELAY_ADDR=127.0.0.1:PORT, V86_RELAY_LAN, MTU (1500), URL, BYTES (the file's
// size, checked against what wget read), RUNS (3).
import { Guest } from "./guest-lib.mjs";

const addr = process.env.V86_RELAY_ADDR;
const url = process.env.URL;
const bytes = Number(process.env.BYTES || 0);
if (!addr || !url || !bytes) {
  console.error("set V86_RELAY_ADDR, URL and BYTES");
  process.exit(2);
}
const mtu = Number(process.env.MTU || 1500);
const runs = Number(process.env.RUNS || 3);
const lan = process.env.V86_RELAY_LAN || `speed-${mtu}`;
const query = mtu === 1500 ? "" : `?mtu=${mtu}`;
let guest;

async function main() {
  guest = await Guest.start({
    name: `mtu${mtu}`,
    relayUrl: `ws://${addr}/lan/${lan}${query}`,
    host: "speed",
    mac: "02:86:00:00:5e:01",
    netDevice: { mtu },
  });
  await guest.waitFor(/V86-READY ip=(\S+)/, 300000);
  await guest.waitFor(/speed:\/# /, 20000);
  const link = (await guest.mustRun("cat /sys/class/net/eth0/mtu")).trim().split("\n").pop().trim();
  if (Number(link) !== mtu) throw new Error(`eth0 has MTU ${link}, wanted ${mtu}`);
  const speeds = [];
  for (let i = 0; i < runs; i++) {
    const t = process.hrtime.bigint();
    // wc -c counts what arrived, so a short download cannot pass for a fast one.
    const out = await guest.mustRun(`timeout 120 wget -q -O - ${url} | wc -c`, 150000);
    const secs = Number(process.hrtime.bigint() - t) / 1e9;
    const got = Number(out.trim().split("\n").pop().trim());
    if (got !== bytes) throw new Error(`downloaded ${got} bytes, wanted ${bytes}:\n${out}`);
    speeds.push((bytes * 8) / secs / 1e6);
  }
  const best = Math.max(...speeds);
  console.log(`GUEST-SPEED mtu=${mtu} bytes=${bytes} best_mbit=${best.toFixed(1)} runs=${speeds.map((s) => s.toFixed(1)).join(",")}`);
  console.log("GUEST-SPEED OK");
}

try {
  await main();
  await guest.stop();
  process.exit(0);
} catch (e) {
  console.error(`GUEST-SPEED FAILED: ${e.stack || e}`);
  if (guest) console.error(`--- serial console (tail) ---\n${guest.out.slice(-3000)}`);
  process.exit(1);
}
