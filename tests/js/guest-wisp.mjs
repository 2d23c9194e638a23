// The real guest in v86 (Node) on one of v86's in-page network backends, which run their
// own small TCP/IP stack and DHCP server in the page and need no Ethernet relay:
//   - Wisp:  V86_RELAY_URL=wisp://127.0.0.1:PORT/wisp/  (v86 maps wisp:// to ws://)
//   - fetch: V86_RELAY_URL=fetch with V86_CORS_PROXY=http://127.0.0.1:PORT/cors/
// The guest takes v86's DHCP lease, then fetches V86_PAGE_URL (its body must contain
// V86_PAGE_EXPECT) and, when V86_BIG_URL is set, downloads that file and compares its
// sha256sum with V86_BIG_SHA256.
// Prints `TIMING name ms` lines and `GUEST-WISP OK` on success; exits 1 with the serial log
// on failure.
import { Guest } from "./guest-lib.mjs";

const relayUrl = process.env.V86_RELAY_URL;
const pageUrl = process.env.V86_PAGE_URL;
if (!relayUrl || !pageUrl) {
  console.error("set V86_RELAY_URL (wisp://HOST:PORT/wisp/ or fetch) and V86_PAGE_URL");
  process.exit(2);
}
const netDevice = process.env.V86_CORS_PROXY ? { cors_proxy: process.env.V86_CORS_PROXY } : {};
const timing = (what, since) => console.log(`TIMING ${what} ${Date.now() - since}`);
let guest;

async function main() {
  let t = Date.now();
  guest = await Guest.start({ name: "vm1", relayUrl, host: "vm1", netDevice });
  // v86's in-page DHCP server hands out 192.168.86.100 by default (net_device.vm_ip).
  const ready = await guest.waitFor(/V86-READY ip=(\S+) host=vm1 mac=(\S+) gw=(\S+) domain=\S*\s/, 300000);
  timing("cold_boot_to_lease", t);
  console.log(`lease ${ready[1]} gw ${ready[3]}`);
  if (!/^\d+\.\d+\.\d+\.\d+$/.test(ready[1]) || !/^\d+\.\d+\.\d+\.\d+$/.test(ready[3])) {
    throw new Error(`no usable lease: ${ready[0]}`);
  }
  await guest.waitFor(/vm1:\/# /, 20000);

  t = Date.now();
  // busybox 1.35's wget crashes on -T (Debian build), so the timeout is busybox timeout.
  const page = await guest.mustRun(`timeout 60 wget -q -O - ${pageUrl}`, 70000);
  const expect = process.env.V86_PAGE_EXPECT || "";
  if (!page.includes(expect)) throw new Error(`page from ${pageUrl} lacks "${expect}":\n${page}`);
  timing("wget_page", t);

  const bigUrl = process.env.V86_BIG_URL;
  if (bigUrl) {
    t = Date.now();
    // Piped, so the guest's 128 MiB of RAM never holds the file; a short or corrupted
    // download shows as a different checksum.
    const out = await guest.mustRun(`timeout 280 wget -q -O - ${bigUrl} | sha256sum`, 300000);
    const sum = (out.match(/\b([0-9a-f]{64})\b/) || [])[1];
    if (sum !== process.env.V86_BIG_SHA256) {
      throw new Error(`sha256 of ${bigUrl} in the guest is ${sum}, expected ${process.env.V86_BIG_SHA256}:\n${out}`);
    }
    timing("wget_big", t);
  }
  console.log("GUEST-WISP OK");
}

try {
  await main();
  await guest.stop();
  process.exit(0);
} catch (e) {
  console.error(`GUEST-WISP FAILED: ${e.stack || e}`);
  if (guest) console.error(`--- vm1 serial console (tail) ---\n${guest.out.slice(-3000)}`);
  process.exit(1);
}
