#!/usr/bin/env bash
# Runs the switch benchmarks of docs/benchmarks.md against a release relay on loopback and
# prints each figure. Usage: loadtest/bench.sh [quick]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet --bin v86-relay --bin v86-loadtest
ulimit -n "$(ulimit -Hn)"
port=18086
target/release/v86-relay --listen 127.0.0.1:$port --metrics-listen off \
  --max-connections 30000 --log warn --config <(printf '[limits]\nmax_ports_per_lan = 4096\n') &
relay=$!
trap 'kill $relay 2>/dev/null || true' EXIT
sleep 1
lt() { target/release/v86-loadtest --url ws://127.0.0.1:$port "$@"; }

echo "== idle: 1000 clients"
lt --mode idle --clients 1000 --lans 10 --duration 3 --relay-pid $relay | grep -E 'RSS|connected'
echo "== idle: 10000 clients"
lt --mode idle --clients 10000 --lans 100 --duration 3 --relay-pid $relay | grep -E 'RSS|connected'
echo "== switch: 50 pairs, 64-byte frames, flat out"
lt --mode switch --clients 100 --lans 10 --frame-size 64 --duration 10 | grep -E 'frames|throughput|latency'
echo "== switch: 50 pairs, 1514-byte frames, flat out"
lt --mode switch --clients 100 --lans 10 --frame-size 1514 --duration 10 | grep -E 'frames|throughput|latency'
echo "== switch: 50 pairs, 64-byte frames, rate-limited (latency at a set load: ${RATE:=4000} frames/s per pair)"
lt --mode switch --clients 100 --lans 10 --frame-size 64 --duration 10 --rate "$RATE" | grep -E 'frames|throughput|latency'
