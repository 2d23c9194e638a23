// The "Packets" panel of the demo page: the LAN's frames as they pass, one line each, as
// the relay decodes them (GET /net/packets?lan=NAME, a WebSocket; see
// relay/src/http/packets.rs). Opened by the "Packets" checkbox or a teacher link
// (?packets=1&token=TEACHER-TOKEN). The relay sends at most a few dozen lines a second and
// says how many frames passed: a busy LAN is sampled, and the panel says so. "Download"
// asks the relay for the last minutes of frames as pcapng (Wireshark opens it).

const $ = (id) => document.getElementById(id);
const MAX_LINES = 400;
const params = new URLSearchParams(location.search);
const token = params.get("token");

// Tests read the panel's state here.
const view = (window.demoPackets = { lines: [], open: false, connected: false, downloads: 0, lastDownloadBytes: 0 });

let socket = null;
let paused = false;
let retry = null;
// Frames seen and lines shown over the last second, for the sampling notice.
let window1s = [];

function setStatus(text) {
  $("packets-status").textContent = text;
}

function lanName() {
  return $("lan").value;
}

function time(ms) {
  const d = new Date(ms);
  return `${d.toTimeString().slice(0, 8)}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}

function addLines(lines) {
  const list = $("packets-lines");
  const stick = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  const fragment = document.createDocumentFragment();
  for (const l of lines) {
    view.lines.push(l.text);
    const li = document.createElement("li");
    li.className = `k-${l.kind}`;
    const t = document.createElement("time");
    t.textContent = time(l.t);
    li.append(t, document.createTextNode(` ${l.text}`));
    fragment.append(li);
  }
  if (view.lines.length > 5000) view.lines.splice(0, view.lines.length - 5000);
  list.append(fragment);
  while (list.childElementCount > MAX_LINES) list.firstElementChild.remove();
  if (stick) list.scrollTop = list.scrollHeight;
}

function onBatch(msg) {
  const now = performance.now();
  window1s.push({ at: now, frames: msg.frames, shown: msg.shown, lost: msg.lost });
  window1s = window1s.filter((w) => now - w.at <= 1000);
  const frames = window1s.reduce((n, w) => n + w.frames, 0);
  const shown = window1s.reduce((n, w) => n + w.shown, 0);
  const lost = window1s.reduce((n, w) => n + w.lost, 0);
  if (paused) {
    setStatus(`paused (${frames} frames/s pass)`);
  } else if (shown < frames) {
    setStatus(`busy LAN: sampling, ${shown} of ${frames} frames/s shown${lost ? `, ${lost} not seen` : ""}`);
  } else {
    setStatus(`live, ${frames} frames/s`);
  }
  if (!paused && msg.lines.length) addLines(msg.lines);
}

function url(scheme) {
  const q = new URLSearchParams({ lan: lanName() });
  if (token) q.set("token", token);
  const filter = $("packets-filter").value.trim();
  if (filter) q.set("filter", filter);
  return `${scheme}//${location.host}/net/packets?${q}`;
}

async function connect() {
  disconnect();
  if (!view.open || !$("lan").checkValidity()) return;
  // A plain GET first: a refusal (no teacher token, bad filter) comes back with its reason.
  try {
    const check = await fetch(url(location.protocol), { cache: "no-store" });
    if (!check.ok) {
      setStatus(`not available: ${(await check.text()).trim()}`);
      return;
    }
  } catch (e) {
    setStatus(`relay unreachable (${e}); retrying`);
    retry = setTimeout(connect, 3000);
    return;
  }
  const ws = new WebSocket(url(location.protocol === "https:" ? "wss:" : "ws:"));
  ws.binaryType = "arraybuffer";
  socket = ws;
  setStatus("connecting...");
  ws.onopen = () => {
    view.connected = true;
    if (paused) ws.send("pause");
    setStatus("live, waiting for frames");
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") return void save(ev.data);
    const msg = JSON.parse(ev.data);
    if (msg.type === "lines") onBatch(msg);
    else if (msg.type === "status") setStatus(msg.text);
  };
  ws.onclose = () => {
    if (socket !== ws) return;
    view.connected = false;
    socket = null;
    if (view.open) {
      setStatus("disconnected; reconnecting");
      retry = setTimeout(connect, 2000);
    }
  };
}

function disconnect() {
  clearTimeout(retry);
  if (socket) {
    const s = socket;
    socket = null;
    s.close();
  }
  view.connected = false;
}

function save(buffer) {
  view.downloads += 1;
  view.lastDownloadBytes = buffer.byteLength;
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([buffer], { type: "application/x-pcapng" }));
  a.download = `${lanName()}-last-minutes.pcapng`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

function setOpen(open) {
  view.open = open;
  $("packets-on").checked = open;
  $("packets-panel").hidden = !open;
  if (open) connect();
  else disconnect();
}

$("packets-on").addEventListener("change", (ev) => setOpen(ev.target.checked));
$("packets-pause").addEventListener("click", () => {
  paused = !paused;
  $("packets-pause").textContent = paused ? "Resume" : "Pause";
  if (socket?.readyState === WebSocket.OPEN) socket.send(paused ? "pause" : "resume");
  setStatus(paused ? "paused" : "live");
});
$("packets-clear").addEventListener("click", () => {
  $("packets-lines").replaceChildren();
  view.lines = [];
});
$("packets-download").addEventListener("click", () => {
  if (socket?.readyState === WebSocket.OPEN) socket.send("pcapng");
  else setStatus("not connected: nothing to download yet");
});
$("packets-filter").addEventListener("change", () => view.open && connect());
$("lan").addEventListener("change", () => view.open && connect());

setOpen(params.get("packets") === "1");
