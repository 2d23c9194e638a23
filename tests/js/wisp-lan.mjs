// One HTTP GET through a Wisp stream with a third-party client (wisp-js), run by
// relay/tests/wisp_lan.rs against /wisp/lan/NAME/:
//
//   node wisp-lan.mjs ws://127.0.0.1:PORT/wisp/lan/NAME/ HOST PORT
//
// Prints the whole response, then `CLOSE <reason>`; exits 1 when the session does not
// open or the stream does not close within 20 s.
import { client } from "@mercuryworkshop/wisp-js/client";

const [url, host, port] = process.argv.slice(2);
const timer = setTimeout(() => {
  console.error("timed out");
  process.exit(1);
}, 20000);
const conn = new client.ClientConnection(url, { wisp_version: 1 });
conn.onerror = () => {
  console.error("websocket error");
  process.exit(1);
};
conn.onopen = () => {
  const stream = conn.create_stream(host, Number(port), "tcp");
  const parts = [];
  stream.onmessage = (bytes) => parts.push(Buffer.from(bytes));
  stream.onclose = (reason) => {
    clearTimeout(timer);
    process.stdout.write(Buffer.concat(parts));
    console.log(`\nCLOSE ${reason}`);
    process.exit(0);
  };
  stream.send(new TextEncoder().encode(`GET / HTTP/1.0\r\nHost: ${host}\r\n\r\n`));
};
