// The real guest in v86 (Node) against a running relay: DHCP lease, ping the gateway, two
// guests on one LAN ping each other by host name, and (V86_RELAY_TEST_NAT=1) fetch a page
// from an "internet" server through NAT.
// Env: V86_RELAY_ADDR=127.0.0.1:PORT (required), V86_RELAY_LAN (default "v86-node"),
// V86_RELAY_TEST_NAT=1 with V86_RELAY_NAT_URL (default http://198.18.0.2/) and
// V86_RELAY_NAT_EXPECT (text the page must contain).
// Prints `TIMING name ms` lines and `GUEST-NODE OK` on success; exits 1 with the serial log
// on failure.
import { Guest } from "./guest-lib.mjs";

const addr = process.env.V86_RELAY_ADDR;
if (!addr) {
  console.error("set V86_RELAY_ADDR=127.0.0.1:PORT of a running relay");
  process.exit(2);
}
const lan = process.env.V86_RELAY_LAN || "v86-node";
const relayUrl = `ws://${addr}/lan/${lan}`;
const t0 = Date.now();
const timing = (what, since) => console.log(`TIMING ${what} ${Date.now() - since}`);
const guests = [];

async function main() {
  // Guest A boots cold with its own MAC and host name (both from the kernel command line).
  let t = Date.now();
  const a = await Guest.start({ name: "vm1", relayUrl, host: "vm1", mac: "02:86:00:00:00:01" });
  guests.push(a);
  const ready = await a.waitFor(/V86-READY ip=(\S+) host=vm1 mac=(\S+) gw=(\S+) domain=(\S*)\s/, 300000);
  timing("cold_boot_to_lease", t);
  const [, ipA, macA, gw, domain] = ready;
  console.log(`vm1 lease ${ipA} mac ${macA} gw ${gw} domain ${domain}`);
  if (!/^10\.0\.2\.\d+$/.test(ipA) || gw !== "10.0.2.2" || macA !== "02:86:00:00:00:01") {
    throw new Error(`unexpected lease: ${ready[0]}`);
  }
  if (domain !== `${lan}.lan`) throw new Error(`DHCP domain is ${domain}, expected ${lan}.lan`);
  await a.waitFor(/vm1:\/# /, 20000);
  t = Date.now();
  await a.mustRun("ping -c 2 -W 3 10.0.2.2");
  timing("ping_gateway", t);

  // Guest B restores A's saved state (seconds instead of a cold boot). It then has A's MAC
  // and address, so it takes its own MAC and host name and asks for a lease of its own.
  t = Date.now();
  const state = await a.save();
  timing("save_state", t);
  console.log(`state ${(state.byteLength / 1048576).toFixed(1)} MiB`);
  t = Date.now();
  const b = await Guest.start({ name: "vm2", relayUrl, host: "vm2", state });
  guests.push(b);
  b.emu.serial0_send("v86-net 02:86:00:00:00:02 vm2\n");
  const readyB = await b.waitFor(/V86-READY ip=(\S+) host=vm2 mac=02:86:00:00:00:02/, 30000);
  timing("restore_to_lease", t);
  const ipB = readyB[1];
  console.log(`vm2 lease ${ipB}`);
  if (ipB === ipA) throw new Error(`both guests got ${ipA}`);

  t = Date.now();
  const outB = await b.mustRun("ping -c 2 -W 3 vm1", 30000);
  if (!outB.includes(ipA)) throw new Error(`vm2 resolved vm1 to something else than ${ipA}:\n${outB}`);
  const outA = await a.mustRun(`ping -c 2 -W 3 vm2.${lan}.lan`, 30000);
  if (!outA.includes(ipB)) throw new Error(`vm1 resolved vm2 to something else than ${ipB}:\n${outA}`);
  timing("ping_by_name", t);

  // The relay's LAN listing (the demo's LAN panel) names both guests with their leases.
  const { machines } = await (await fetch(`http://${addr}/net/lan?lan=${lan}`)).json();
  for (const [host, ip, mac] of [["vm1", ipA, macA], ["vm2", ipB, "02:86:00:00:00:02"]]) {
    const m = machines.find((m) => m.host === host);
    if (!m || m.ip !== ip || m.mac !== mac || m.transport !== "websocket" || !(m.frames_in > 0)) {
      throw new Error(`GET /net/lan lacks ${host} ${ip} ${mac}: ${JSON.stringify(machines)}`);
    }
  }

  if (process.env.V86_RELAY_TEST_NAT === "1") {
    const url = process.env.V86_RELAY_NAT_URL || "http://198.18.0.2/";
    const expect = process.env.V86_RELAY_NAT_EXPECT || "";
    t = Date.now();
    // busybox 1.35's wget crashes on -T (Debian build), so the timeout is busybox timeout.
    const page = await a.mustRun(`timeout 20 wget -q -O - ${url}`, 30000);
    if (!page.includes(expect)) throw new Error(`page from ${url} lacks "${expect}":\n${page}`);
    timing("wget_through_nat", t);
  } else {
    console.log("NAT step skipped (set V86_RELAY_TEST_NAT=1 once NAT is in)");
  }
  timing("total", t0);
  console.log("GUEST-NODE OK");
}

try {
  await main();
  await Promise.all(guests.map((g) => g.stop()));
  process.exit(0);
} catch (e) {
  console.error(`GUEST-NODE FAILED: ${e.stack || e}`);
  for (const g of guests) console.error(`--- ${g.name} serial console (tail) ---\n${g.out.slice(-3000)}`);
  process.exit(1);
}
