#!/usr/bin/env bash
# NAT benchmarks on this machine, in one run (needs root; all traffic stays in namespaces
# this script creates, on 198.18.0.0/15, and on loopback):
#   1. single-flow TCP throughput (iperf3, 10 s) VM -> internet and internet -> VM, through
#      the relay (release build, default settings) and through slirp4netns beside it;
#   2. TCP request/response latency through NAT (1-byte messages), relay and slirp4netns;
#   3. relay CPU time per GB moved (from /proc/PID/stat over the iperf3 runs);
#   4. 1,000 concurrent TCP flows from 100 VMs (namespaces), each checking its data.
# Usage: loadtest/nat_bench.sh [--quick]   (--quick: 3 s iperf3 runs, 10 VMs)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[ "${1:-}" = "--quick" ] && quick=1
secs=10; vms=100; flows_per_vm=10
[ $quick = 1 ] && { secs=3; vms=10; }

[ "$(id -u)" = 0 ] || { echo "nat_bench: needs root (network namespaces, TAP)"; exit 1; }
for tool in iperf3 slirp4netns busybox python3 curl; do
  command -v $tool >/dev/null || { echo "nat_bench: $tool missing (bash scripts/setup-test-deps.sh)"; exit 1; }
done
[ -n "${RELAY_BIN:-}" ] || cargo build --release -q -p relay
tag=nb$$
source loadtest/nat_lib.sh
make_internet
# 1-byte echo for latency, and a bulk source for the many-flow test.
ip netns exec $inet python3 -c '
import socket, threading
def echo(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        d = c.recv(1)
        if not d: break
        c.sendall(d)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7001)); s.listen(64)
while True:
    c, _ = s.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()
' & pids+=($!)
ip netns exec $inet python3 -c '
import socket, threading
block = bytes(range(256)) * 4096          # 1 MiB, a known pattern
def serve(c):
    try: c.sendall(block)
    finally: c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7002)); s.listen(2048)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
' & pids+=($!)
sleep 0.5

# The relay, defaults, metrics on loopback.
start_relay

latency() { # ns -> "p50_us p99_us"
  ip netns exec "$1" python3 -c '
import socket, time
s = socket.create_connection(("198.18.50.2", 7001)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(200): s.sendall(b"x"); s.recv(1)
t = []
for _ in range(5000):
    a = time.perf_counter_ns(); s.sendall(b"x"); s.recv(1); t.append(time.perf_counter_ns() - a)
t.sort(); print("%.0f %.0f" % (t[len(t)//2]/1e3, t[len(t)*99//100]/1e3))'
}

echo "== NAT benchmarks ($(date -u +%FT%TZ), $(nproc) cores, iperf3 ${secs}s) =="
vm=${tag}-vm; new_vm $vm
t0=$(cpu_ticks)
read up_gbps up_bytes < <(iperf $vm)
read down_gbps down_bytes < <(iperf $vm -R)
t1=$(cpu_ticks)
cpu_per_gb=$(python3 -c "print('%.2f' % ((($t1-$t0)/$hz) / (($up_bytes+$down_bytes)/1e9)))")
read rp50 rp99 < <(latency $vm)
echo "relay       : VM->internet $up_gbps Gbit/s, internet->VM $down_gbps Gbit/s; RR p50 ${rp50} us, p99 ${rp99} us; CPU ${cpu_per_gb} s/GB"

# slirp4netns beside it, same internet, same run.
slirp=${tag}-slirp
ip netns add $slirp; namespaces+=($slirp)
slirp4netns --configure --mtu=1500 --disable-host-loopback --netns-type=path /run/netns/$slirp tap0 >/dev/null 2>&1 & pids+=($!)
sleep 1
read sup _ < <(iperf $slirp)
read sdown _ < <(iperf $slirp -R)
read sp50 sp99 < <(latency $slirp)
echo "slirp4netns : VM->internet $sup Gbit/s, internet->VM $sdown Gbit/s; RR p50 ${sp50} us, p99 ${sp99} us"

# Many flows: $vms VMs, $flows_per_vm concurrent 1 MiB downloads each, all checked.
for i in $(seq 1 $vms); do new_vm ${tag}-m$i; done
start=$(date +%s.%N)
clients=()
for i in $(seq 1 $vms); do
  ip netns exec ${tag}-m$i python3 -c '
import socket, threading, sys
want = bytes(range(256)) * 4096
ok = []
def fetch():
    s = socket.create_connection(("198.18.50.2", 7002), timeout=60)
    got = bytearray()
    while True:
        d = s.recv(65536)
        if not d: break
        got += d
    ok.append(got == want)
ts = [threading.Thread(target=fetch) for _ in range('$flows_per_vm')]
[t.start() for t in ts]; [t.join() for t in ts]
print(sum(ok))' > /tmp/$tag-m$i.out 2> /tmp/$tag-m$i.err & clients+=($!)
done
for pid in "${clients[@]}"; do wait $pid || true; done
good=$(cat /tmp/$tag-m*.out 2>/dev/null | grep '^[0-9]' | paste -sd+ | bc)
elapsed=$(python3 -c "print('%.1f' % ($(date +%s.%N) - $start))")
rss=$(awk '/VmHWM/ {print $2}' /proc/$relay_pid/status)
rm -f /tmp/$tag-m*.out
echo "many flows  : $good of $((vms * flows_per_vm)) flows from $vms VMs correct (1 MiB each) in ${elapsed} s; relay peak RSS $((rss / 1024)) MiB"
# What the relay dropped, refused or saw fail over the whole run (non-zero counters only),
# and which errors the clients that failed saw.
curl -s 127.0.0.1:$mport/metrics |
  grep -E '^v86_relay_(frames_dropped|frames_lost|gateway_frames_dropped|nat_connect_failures|nat_denied|nat_timeouts)' |
  grep -v ' 0$' | sed 's/^/  /' || true
cat /tmp/$tag-m*.err 2>/dev/null | grep -oE '[A-Za-z]+Error: .*' | sort | uniq -c | sed 's/^/  clients: /' || true
rm -f /tmp/$tag-m*.err
