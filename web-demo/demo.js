// The demo page: boots the guest from vendor/v86 (served by the relay under /v86/, /guest/,
// /xterm/) on a LAN of this relay, shows its screen and serial console, lists the LAN's
// machines from GET /net/lan, and keeps a saved VM state in IndexedDB so the next boot
// restores in seconds instead of booting Linux.
import { V86 } from "/v86/libv86.mjs";
import { Terminal } from "/xterm/lib/xterm.mjs";

// Same as tests/js/guest-lib.mjs: these options save about 8 s of kernel boot.
const BASE_CMDLINE =
  "console=tty0 console=ttyS0 quiet loglevel=3 cryptomgr.notests=1 noisapnp tsc=reliable mitigations=off";
const LAN_RE = /^[A-Za-z0-9_-]{1,64}$/;
const $ = (id) => document.getElementById(id);

// Tests read the serial console and the state of the page through this object.
const demo = (window.demo = { serial: "", emulator: null, ready: null, restored: false, saved: false });

const params = new URLSearchParams(location.search);
const randomHex = (n) => Array.from(crypto.getRandomValues(new Uint8Array(n)), (b) => b.toString(16).padStart(2, "0"));
// One identity per tab (kept across reloads of the tab): a locally administered MAC, so
// tabs restored from one saved state still differ.
const mac = sessionStorage.getItem("v86-mac") || ["02", ...randomHex(5)].join(":");
sessionStorage.setItem("v86-mac", mac);
$("lan").value = LAN_RE.test(params.get("lan") || "") ? params.get("lan") : `lan-${randomHex(2).join("")}`;
$("host").value = params.get("host") || sessionStorage.getItem("v86-host") || `vm-${randomHex(2).join("")}`;
if (params.get("transport")) $("transport").value = params.get("transport");
if (params.get("mtu") === "65520") $("mtu").value = "65520";

function status(text) {
  $("status").textContent = text;
}

function lanName() {
  return $("lan").value;
}

function syncUrl() {
  const url = new URL(location.href);
  url.searchParams.set("lan", lanName());
  history.replaceState(null, "", url);
  $("lan-name").textContent = lanName();
}
syncUrl();
$("lan").addEventListener("change", () => $("lan").checkValidity() && syncUrl());

$("share").addEventListener("click", async () => {
  const url = new URL(location.origin + location.pathname);
  url.searchParams.set("lan", lanName());
  try {
    await navigator.clipboard.writeText(url.href);
    status(`Copied ${url.href}: open it in other tabs or on other computers to join LAN ${lanName()}.`);
  } catch {
    status(`Share this link: ${url.href}`);
  }
});

$("another").addEventListener("click", () => {
  const url = new URL(location.origin + location.pathname);
  url.searchParams.set("lan", lanName());
  // noopener: the new tab must not inherit this tab's sessionStorage (its MAC and name).
  window.open(url.href, "_blank", "noopener");
});

// --- Saved states in IndexedDB, keyed by the guest build so a rebuilt guest boots fresh.
function db() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open("v86-relay-demo", 1);
    req.onupgradeneeded = () => req.result.createObjectStore("states");
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}
async function idb(mode, fn) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const tx = d.transaction("states", mode);
    const req = fn(tx.objectStore("states"));
    tx.oncomplete = () => resolve(req.result);
    tx.onerror = () => reject(tx.error);
  });
}
async function guestVersion() {
  const heads = await Promise.all(
    ["bzImage", "initrd"].map((f) => fetch(`/guest/${f}`, { method: "HEAD" })),
  );
  return heads.map((r) => `${r.headers.get("last-modified")}/${r.headers.get("content-length")}`).join("|");
}
const stateKey = guestVersion().then((v) => `guest:${v}`);
// A state saved with one NIC MTU is not restored into another.
const mtuSuffix = () => ($("mtu").value === "1500" ? "" : `:mtu${$("mtu").value}`);
async function loadState() {
  const key = (await stateKey) + mtuSuffix();
  return idb("readonly", (s) => s.get(key)).catch(() => undefined);
}

async function saveState() {
  if (!demo.emulator) return;
  const t = performance.now();
  const state = await demo.emulator.save_state();
  const key = (await stateKey) + mtuSuffix();
  await idb("readwrite", (s) => s.put(state, key));
  demo.saved = true;
  status(`Saved the VM state (${(state.byteLength / 1048576).toFixed(0)} MiB, ${Math.round(performance.now() - t)} ms): the next boot in any tab of this browser restores it.`);
}
$("save").addEventListener("click", () => saveState().catch((e) => status(`Saving failed: ${e}`)));
$("forget").addEventListener("click", async () => {
  const key = (await stateKey) + mtuSuffix();
  await idb("readwrite", (s) => s.delete(key)).catch(() => {});
  status("Forgot the saved state: the next boot starts Linux from scratch.");
});

// --- The transport picker: WebSocket is v86's own; the others come from relay-client.js
// when this relay has it.
let relayClient = null;
import("./relay-client.js")
  .then((m) => {
    relayClient = m;
    for (const o of $("transport").options) o.disabled = false;
  })
  .catch(() => {
    for (const o of $("transport").options) if (o.value !== "websocket") o.title = "needs web-demo/relay-client.js";
  });

// A relay with [auth] needs a join token: the page takes it from its own URL (?token=).
const joinToken = new URLSearchParams(location.search).get("token");

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const q = new URLSearchParams();
  if (joinToken) q.set("token", joinToken);
  // The MTU a LAN gets when this join creates it (a LAN that exists keeps its own).
  if ($("mtu").value !== "1500") q.set("mtu", $("mtu").value);
  const query = q.size ? `?${q}` : "";
  return `${scheme}//${location.host}/lan/${lanName()}${query}`;
}

// --- Boot.
$("controls").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!$("controls").reportValidity() || demo.emulator) return;
  syncUrl();
  const host = $("host").value;
  sessionStorage.setItem("v86-host", host);
  for (const id of ["boot", "lan", "host", "transport", "mtu"]) $(id).disabled = true;
  const transport = $("transport").value;
  const viaClient = transport !== "websocket" && relayClient;
  const state = await loadState();
  demo.restored = !!state;
  const t0 = performance.now();
  status(state ? "Restoring the saved VM state..." : "Booting Linux (the first boot takes a while; later ones restore a saved state)...");

  const emulator = new V86({
    wasm_path: "/v86/v86.wasm",
    memory_size: 128 * 1024 * 1024,
    vga_memory_size: 2 * 1024 * 1024,
    bios: { url: "/guest/bios.bin" },
    vga_bios: { url: "/guest/vgabios.bin" },
    bzimage: { url: "/guest/bzImage" },
    initrd: { url: "/guest/initrd" },
    cmdline: `${BASE_CMDLINE} v86host=${host} v86mac=${mac}`,
    initial_state: state ? { buffer: state } : undefined,
    screen_container: $("screen"),
    serial_console: { type: "xtermjs", container: $("serial"), xterm_lib: Terminal },
    net_device: viaClient
      ? { type: "virtio", mtu: Number($("mtu").value) }
      : { type: "virtio", relay_url: wsUrl(), mtu: Number($("mtu").value) },
    autostart: true,
  });
  demo.emulator = emulator;
  if (viaClient) {
    relayClient.connect(emulator, { relay: location.origin, lan: lanName(), transport, token: joinToken });
  }

  let line = "";
  emulator.add_listener("serial0-output-byte", (byte) => {
    const c = String.fromCharCode(byte);
    demo.serial = (demo.serial + c).slice(-65536);
    if (c !== "\n") return void (line += c);
    const ready = line.match(/V86-READY ip=(\S+) host=(\S+) mac=(\S+)/);
    line = "";
    if (!ready || ready[3] !== mac) return;
    const secs = ((performance.now() - t0) / 1000).toFixed(1);
    demo.ready = { ip: ready[1], host: ready[2], mac: ready[3], secs: Number(secs) };
    status(`${ready[2]} is up as ${ready[1]} on LAN ${lanName()} after ${secs} s. Type in the serial console below.`);
    $("save").disabled = false;
    // The first cold boot saves its state, so the next boot (any tab) takes seconds.
    if (!state && !demo.saved) setTimeout(() => saveState().catch((e) => status(`Saving failed: ${e}`)), 1500);
  });
  if (state) {
    // The saved state carries another tab's MAC, address and name: take this tab's own.
    emulator.add_listener("emulator-started", () => {
      setTimeout(() => emulator.serial0_send(`v86-net ${mac} ${host}\n`), 300);
    });
  }
});

// --- The LAN panel.
function human(n) {
  return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`;
}
function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text ?? "-";
  if (cls) td.className = cls;
  return td;
}
async function refreshLan() {
  if (!$("lan").checkValidity()) return;
  try {
    const r = await fetch(`/net/lan?lan=${encodeURIComponent(lanName())}`, { cache: "no-store" });
    if (!r.ok) return;
    const { machines } = await r.json();
    demo.machines = machines;
    const rows = machines.map((m) => {
      const tr = document.createElement("tr");
      if (m.mac === mac) tr.className = "me";
      tr.append(
        cell(m.host ?? "(no lease)"),
        cell(m.ip),
        cell(m.mac),
        cell(m.transport),
        cell(`${m.frames_in} / ${m.frames_out}`, "num"),
        cell(`${human(m.bytes_in)} / ${human(m.bytes_out)}`, "num"),
      );
      return tr;
    });
    if (rows.length === 0) {
      const tr = document.createElement("tr");
      tr.append(cell("No machines yet: boot one (v86 connects on its first frame)."));
      tr.firstChild.colSpan = 6;
      rows.push(tr);
    }
    $("machines").replaceChildren(...rows);
  } catch {
    // The relay restarting: try again next tick.
  }
}
refreshLan();
setInterval(refreshLan, 1000);
