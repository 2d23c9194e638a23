// Boots the demo guest (vendor/v86/out) in Node with v86 from vendor/v86/node_modules and
// drives its serial console. Shared by the guest-*.mjs tests.
import { readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const repo = path.resolve(here, "../..");
export const v86Dir = process.env.V86_DIR || path.join(repo, "vendor/v86/node_modules/v86");
export const guestDir = process.env.V86_GUEST_DIR || path.join(repo, "vendor/v86/out");

// v86 needs a global WebSocket for its network adapter; Node 20 has none, and without it
// v86 silently never connects.
if (!globalThis.WebSocket) {
  globalThis.WebSocket = (await import("ws")).WebSocket;
}
const { V86 } = await import(pathToFileURL(path.join(v86Dir, "build/libv86.mjs")).href);

// cryptomgr.notests and noisapnp save about 8 s of boot; tsc=reliable avoids a slow
// clocksource check in the emulator.
export const BASE_CMDLINE =
  "console=tty0 console=ttyS0 quiet loglevel=3 cryptomgr.notests=1 noisapnp tsc=reliable mitigations=off";

let files;
async function guestFiles() {
  files ??= Object.fromEntries(
    await Promise.all(
      ["bios.bin", "vgabios.bin", "bzImage", "initrd"].map(async (f) => {
        const b = await readFile(path.join(guestDir, f));
        return [f, b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)];
      }),
    ),
  );
  return files;
}

export class Guest {
  /** name: for logs; relayUrl: ws://.../lan/NAME (or v86's wisp://... or "fetch");
   *  host/mac: guest identity on cold boot; state: an ArrayBuffer from save() to restore
   *  instead of booting; netDevice: more net_device options (e.g. cors_proxy). */
  static async start({ name, relayUrl, host, mac, state, netDevice }) {
    const f = await guestFiles();
    const g = new Guest(name);
    const cmdline = `${BASE_CMDLINE} v86host=${host}${mac ? ` v86mac=${mac}` : ""}`;
    g.emu = new V86({
      wasm_path: path.join(v86Dir, "build/v86.wasm"),
      memory_size: 128 * 1024 * 1024,
      vga_memory_size: 2 * 1024 * 1024,
      bios: { buffer: f["bios.bin"] },
      vga_bios: { buffer: f["vgabios.bin"] },
      bzimage: { buffer: f["bzImage"] },
      initrd: { buffer: f["initrd"] },
      cmdline,
      initial_state: state ? { buffer: state } : undefined,
      net_device: { type: "virtio", relay_url: relayUrl, ...netDevice },
      autostart: true,
      disable_keyboard: true,
      disable_mouse: true,
      disable_speaker: true,
    });
    g.emu.add_listener("serial0-output-byte", (b) => {
      g.out += String.fromCharCode(b);
    });
    await new Promise((resolve) => g.emu.add_listener("emulator-ready", resolve));
    return g;
  }

  constructor(name) {
    this.name = name;
    this.out = "";
    this.seq = 0;
  }

  /** Waits until the serial output after `from` matches `re`; returns the match. */
  async waitFor(re, timeoutMs, from = 0) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.out.slice(from).match(re);
      if (m) return m;
      if (Date.now() > deadline) {
        throw new Error(
          `${this.name}: no ${re} within ${timeoutMs} ms; serial console ended with:\n${this.out.slice(-1500)}`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Runs a shell command on the serial console; returns {rc, output}. */
  async run(cmd, timeoutMs = 20000) {
    const id = `${this.name}-${++this.seq}`;
    const from = this.out.length;
    // The marker's digits only exist in the output, never in the echoed command line.
    this.emu.serial0_send(`${cmd}; echo "@@${id} rc=$?"\n`);
    const m = await this.waitFor(new RegExp(`@@${id} rc=(\\d+)\\s`), timeoutMs, from);
    return { rc: Number(m[1]), output: this.out.slice(from, from + m.index) };
  }

  async mustRun(cmd, timeoutMs) {
    const r = await this.run(cmd, timeoutMs);
    if (r.rc !== 0) throw new Error(`${this.name}: \`${cmd}\` failed (rc ${r.rc}):\n${r.output}`);
    return r.output;
  }

  async save() {
    return await this.emu.save_state();
  }

  async stop() {
    await this.emu.destroy();
  }
}
