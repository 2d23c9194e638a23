// Guest download speed through the relay's NAT: the demo guest in v86 (Node, virtio NIC
// with net_device.mtu = MTU) joins LAN V86_RELAY_LAN with ?mtu=MTU (the first join chooses
// the LAN's MTU), takes its lease and downloads URL with busybox wget to /dev/null, RUNS
// times (timed from the command to its end marker on the serial console). Prints `GUEST-SPEED mtu=M bytes=B best_mbit=X runs=a,b,... avg_rx_frame=N`
// (eth0's received bytes per packet) and `GUEST-SPEED OK`.
// Env: V86_RELAY_ADDR=127.0.0.1:PORT, V86_RELAY_LAN, MTU (1500), URL, BYTES (the file's
// size), RUNS (3).
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
  await guest.waitFor(/V86-READY ip=(\S+) /, 300000);
  await guest.waitFor(/speed:\/# /, 20000);
  const link = (await guest.mustRun("cat /sys/class/net/eth0/mtu")).trim().split("\n").pop().trim();
  if (Number(link) !== mtu) throw new Error(`eth0 has MTU ${link}, wanted ${mtu}`);
  const speeds = [];
  for (let i = 0; i < runs; i++) {
    const t = process.hrtime.bigint();
    // Straight to /dev/null: a pipe to wc would cost the emulated CPU as much again. wget
    // fails on a short body (it knows Content-Length), and mustRun fails on that.
    await guest.mustRun(`timeout 120 wget -q -O /dev/null ${url}`, 150000);
    const secs = Number(process.hrtime.bigint() - t) / 1e9;
    speeds.push((bytes * 8) / secs / 1e6);
  }
  const best = Math.max(...speeds);
  // The frames the guest took: their average size shows whether large frames were used.
  const stats = await guest.mustRun("cat /sys/class/net/eth0/statistics/rx_bytes /sys/class/net/eth0/statistics/rx_packets");
  const [rxBytes, rxPackets] = stats.trim().split("\n").slice(-2).map(Number);
  const avg = Math.round(rxBytes / rxPackets);
  console.log(`GUEST-SPEED mtu=${mtu} bytes=${bytes} best_mbit=${best.toFixed(1)} runs=${speeds.map((s) => s.toFixed(1)).join(",")} avg_rx_frame=${avg}`);
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
