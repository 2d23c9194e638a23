#!/usr/bin/env bash
# Runs the benchmarks of docs/benchmarks.md against a release relay on loopback and
# prints each figure. Usage: loadtest/bench.sh [all|switch|gateway]
#   switch:  memory per idle client, switch throughput and latency
#   gateway: DHCP handshakes/s and DNS queries/s (cached, uncached) against a loopback
#            dnsmasq; each figure runs 3 times (RUNS=N) on a fresh relay, medians printed
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet --bin v86-relay --bin v86-loadtest
ulimit -n "$(ulimit -Hn)"
what=${1:-all}
case $what in all | switch | gateway) ;; *) echo "usage: $0 [all|switch|gateway]" >&2; exit 2 ;; esac
if [[ $what == all || $what == switch ]]; then
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
kill $relay 2>/dev/null || true
wait $relay 2>/dev/null || true
fi

# ---- DHCP and DNS (issue 3) ----
if [[ $what == all || $what == gateway ]]; then
runs=${RUNS:-3}
dir=$(mktemp -d)
gw_port=18087
dns_port=18053
# Every LAN gets a /16, so one LAN holds thousands of leases (the default /24 has 240).
printf '%s\n' '[limits]' 'max_ports_per_lan = 16384' '[network]' 'subnet = "10.0.0.0/16"' \
  'gateway = "10.0.0.2"' 'dns = "10.0.0.3"' 'pool_start = "10.0.0.15"' \
  'pool_end = "10.0.255.254"' '[dns]' "upstream = [\"127.0.0.1:$dns_port\"]" >"$dir/relay.toml"
# The "internet" DNS: every name under bench.test is 198.18.0.9, TTL 1 h so answers cache.
dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
  --listen-address=127.0.0.1 --port=$dns_port --address=/bench.test/198.18.0.9 \
  --local-ttl=3600 --pid-file="$dir/dnsmasq.pid" --user="$(id -un)" >/dev/null 2>&1 &
dnsmasq_pid=$!
gw_relay=
trap 'kill $gw_relay $dnsmasq_pid 2>/dev/null || true; rm -rf "$dir"' EXIT
sleep 0.5

# One run: a fresh relay (empty LANs and lease tables), the load test, the relay stopped.
gw_run() {
  target/release/v86-relay --listen 127.0.0.1:$gw_port --metrics-listen off --log warn \
    --max-connections 30000 --config "$dir/relay.toml" &
  gw_relay=$!
  sleep 1
  target/release/v86-loadtest --url ws://127.0.0.1:$gw_port --relay-pid $gw_relay \
    --upstream-pid $dnsmasq_pid --json "$@" 2>/dev/null | tail -n 1
  kill $gw_relay
  wait $gw_relay 2>/dev/null || true
  gw_relay=
}

# Runs a figure $runs times, prints each run and the medians.
gw_figure() {
  local title=$1
  shift
  echo "== $title"
  echo "   v86-loadtest $*   (load average before: $(cut -d' ' -f1-3 /proc/loadavg))"
  for _ in $(seq "$runs"); do gw_run "$@"; done | python3 loadtest/bench_summary.py
}

gw_figure "dhcp: 1000 VMs, one per LAN, 10 handshakes each, 64 in flight" \
  --mode dhcp --clients 1000 --lans 1000 --rounds 10
gw_figure "dhcp: 1000 VMs, 10 per LAN (broadcasts reach 9 neighbours), 10 handshakes each" \
  --mode dhcp --clients 1000 --lans 100 --rounds 10
gw_figure "dhcp: 1000 VMs in one /16 LAN (each broadcast reaches 999 VMs), 1 handshake each" \
  --mode dhcp --clients 1000 --lans 1
gw_figure "dhcp: unloaded latency, 1000 VMs one per LAN, 1 handshake in flight" \
  --mode dhcp --clients 1000 --lans 1000 --in-flight 1
gw_figure "dns cached: 100 VMs in 10 LANs, 8 queries in flight each, 10 s" \
  --mode dns --dns-names cached --clients 100 --lans 10 --in-flight 8 --duration 10
gw_figure "dns uncached: 100 VMs in 10 LANs, 8 queries in flight each, 10 s" \
  --mode dns --dns-names uncached --clients 100 --lans 10 --in-flight 8 --duration 10
gw_figure "dns cached, unloaded latency: 10 VMs in 10 LANs, 1 query in flight each, 5 s" \
  --mode dns --dns-names cached --clients 10 --lans 10 --in-flight 1 --duration 5
gw_figure "dns uncached, unloaded latency: 10 VMs in 10 LANs, 1 query in flight each, 5 s" \
  --mode dns --dns-names uncached --clients 10 --lans 10 --in-flight 1 --duration 5
gw_figure "dns uncached over the per-VM limit (32): 10 VMs, 48 in flight each, 5 s (REFUSED expected)" \
  --mode dns --dns-names uncached --clients 10 --lans 10 --in-flight 48 --duration 5
fi
