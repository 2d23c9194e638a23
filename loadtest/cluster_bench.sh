#!/usr/bin/env bash
# The cluster bus benchmark of docs/benchmarks.md ("Cluster over NATS"): the same switch load
# between two clients on one relay node, and between clients on two nodes of a cluster (each
# frame crosses NATS once), in the same run, with the CPU of nats-server and of the relays.
# Usage: loadtest/cluster_bench.sh   (needs nats-server; DURATION=10 RATE=1000 to change)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet --bin v86-relay --bin v86-loadtest
ulimit -n "$(ulimit -Hn)"
dir=$(mktemp -d)
nats_port=14222
a=18186
b=18187
duration=${DURATION:-10}
nats-server -js -a 127.0.0.1 -p $nats_port -sd "$dir/js" >/dev/null 2>&1 &
nats=$!
pids=($nats)
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
sleep 0.5
printf '[limits]\nmax_ports_per_lan = 4096\n[cluster]\nlease_ttl_secs = 10\n' >"$dir/relay.toml"
for port in $a $b; do
  target/release/v86-relay --listen 127.0.0.1:$port --metrics-listen off --log warn \
    --webtransport-listen off --webrtc-listen off --config "$dir/relay.toml" \
    --cluster-nats nats://127.0.0.1:$nats_port --node-name "bench-$port" &
  pids+=($!)
done
relay_a=${pids[1]}
relay_b=${pids[2]}
sleep 1

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
run=0
# One measurement: prints the load test's figures and each process's CPU over the run.
measure() {
  local title=$1
  shift
  run=$((run + 1))
  echo "== $title"
  echo "   v86-loadtest --lan-prefix r$run- $*"
  local n0 a0 b0 t0 t1
  n0=$(ticks $nats) a0=$(ticks $relay_a) b0=$(ticks $relay_b) t0=$(date +%s.%N)
  target/release/v86-loadtest --lan-prefix "r$run-" --duration "$duration" "$@" |
    grep -E 'frames|throughput|latency'
  t1=$(date +%s.%N)
  python3 - "$hz" "$t0" "$t1" "$n0" "$(ticks $nats)" "$a0" "$(ticks $relay_a)" "$b0" "$(ticks $relay_b)" <<'PY'
import sys
hz, t0, t1 = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
v = [int(x) for x in sys.argv[4:]]
wall = t1 - t0
cpu = lambda i: (v[i + 1] - v[i]) / hz / wall * 100
print(f"   CPU over {wall:.1f} s: nats-server {cpu(0):.0f} %, node A {cpu(2):.0f} %, node B {cpu(4):.0f} %")
PY
}

one="--url ws://127.0.0.1:$a"
two="--url ws://127.0.0.1:$a --peer-url ws://127.0.0.1:$b"
rate=${RATE:-1000}
measure "one node: 1 pair, 64 B, $rate frames/s (latency)" $one --mode switch --clients 2 --frame-size 64 --rate "$rate"
measure "two nodes: 1 pair, 64 B, $rate frames/s (latency)" $two --mode switch --clients 2 --frame-size 64 --rate "$rate"
measure "one node: 10 pairs in 10 LANs, 64 B, flat out" $one --mode switch --clients 20 --lans 10 --frame-size 64
measure "two nodes: 10 pairs in 10 LANs, 64 B, flat out" $two --mode switch --clients 20 --lans 10 --frame-size 64
measure "one node: 10 pairs in 10 LANs, 1514 B, flat out" $one --mode switch --clients 20 --lans 10 --frame-size 1514
measure "two nodes: 10 pairs in 10 LANs, 1514 B, flat out" $two --mode switch --clients 20 --lans 10 --frame-size 1514
measure "one node: 10 pairs in 10 LANs, 1514 B, 8000 frames/s per pair" $one --mode switch --clients 20 --lans 10 --frame-size 1514 --rate 8000
measure "two nodes: 10 pairs in 10 LANs, 1514 B, 8000 frames/s per pair" $two --mode switch --clients 20 --lans 10 --frame-size 1514 --rate 8000
