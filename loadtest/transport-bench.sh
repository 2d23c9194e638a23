#!/usr/bin/env bash
# What a person gets from each transport, in one run: the demo page boots its guest in
# headless Chromium over WebSocket (v86's own), WebTransport and WebRTC (relay-client.js),
# and the guest downloads and uploads through the relay's NAT from an "internet" namespace
# (198.18.62.0/24, created here; needs root) and pings the LAN's gateway.
# loadtest/transport-bench.mjs does the browser part and prints the table.
#
# Usage: loadtest/transport-bench.sh [--mib 16] [--rounds 1] [--only webrtc,websocket]
#        [--relay-args "..."]   (extra relay flags, e.g. to try a setting)
# Env: RELAY_BIN (a built v86-relay instead of building one), CHROMIUM.
# Needs: root, chromium, node + tests/js/node_modules (npm ci in tests/js),
# vendor/v86/out and vendor/v86/node_modules (vendor/v86/build-guest.sh, npm ci).
set -euo pipefail
cd "$(dirname "$0")/.."

relay_args=""
bench_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --relay-args) relay_args=$2; shift 2;;
    *) bench_args+=("$1"); shift;;
  esac
done

[ "$(id -u)" = 0 ] || { echo "transport-bench: needs root (an internet namespace)"; exit 1; }
for tool in node python3 curl "${CHROMIUM:-chromium}"; do
  command -v "$tool" >/dev/null || { echo "transport-bench: $tool missing (bash scripts/setup-test-deps.sh)"; exit 1; }
done
# RELAY_BIN=path runs that binary instead (e.g. a saved build, to compare two).
if [ -z "${RELAY_BIN:-}" ]; then cargo build --release -q -p relay; fi
relay_bin=${RELAY_BIN:-target/release/v86-relay}
tag=tb$$
net=62
pids=()
cleanup() {
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del ${tag}-inet 2>/dev/null || true
  ip link del ${tag}h 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The "internet": 198.18.62.2 behind a veth pair whose host side is 198.18.62.1.
inet=${tag}-inet
ip netns add $inet
ip -n $inet link set lo up
ip link add ${tag}h type veth peer name ${tag}p
ip link set ${tag}p netns $inet
ip addr add 198.18.$net.1/24 dev ${tag}h; ip link set ${tag}h up
ip -n $inet addr add 198.18.$net.2/24 dev ${tag}p; ip -n $inet link set ${tag}p up
ip -n $inet route add default via 198.18.$net.1
# Port 8000: HTTP, GET /N answers N bytes. Port 9000: reads a decimal length line, then
# that many bytes, and answers "ok SECONDS" (first to last byte, the receiver's clock).
ip netns exec $inet python3 -c '
import socket, threading, time
def http(c):
    try:
        req = b""
        while b"\r\n\r\n" not in req:
            d = c.recv(4096)
            if not d: return
            req += d
        n = int(req.split(b" ")[1].strip(b"/") or b"0")
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
        block = bytes(65536)
        while n > 0:
            k = min(n, len(block)); c.sendall(block[:k]); n -= k
    except Exception: pass
    finally: c.close()
def sink(c):
    try:
        head = b""
        while b"\n" not in head:
            d = c.recv(4096)
            if not d: return
            head += d
        line, rest = head.split(b"\n", 1)
        left = int(line) - len(rest)
        t0 = time.monotonic()
        while left > 0:
            d = c.recv(262144)
            if not d: return
            left -= len(d)
        c.sendall(b"ok %.3f\n" % (time.monotonic() - t0))
    except Exception: pass
    finally: c.close()
def serve(port, fn):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16)
    while True:
        c, _ = s.accept(); threading.Thread(target=fn, args=(c,), daemon=True).start()
threading.Thread(target=serve, args=(9000, sink), daemon=True).start()
serve(8000, http)
' & pids+=($!)

port=$((20000 + RANDOM % 20000)); mport=$((port + 2))
# shellcheck disable=SC2086
$relay_bin --listen 127.0.0.1:$port --metrics-listen 127.0.0.1:$mport --log warn $relay_args & pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null 127.0.0.1:$mport/metrics && break; sleep 0.1; done

V86_RELAY_ADDR=127.0.0.1:$port V86_RELAY_METRICS=127.0.0.1:$mport V86_BENCH_TARGET=198.18.$net.2 \
  node loadtest/transport-bench.mjs "${bench_args[@]}"
