#!/usr/bin/env bash
# 100,000 concurrent NAT flows (issue 13), in one run (needs root; traffic stays in
# namespaces this script creates, on 198.18.50.0/24, and on loopback):
#   1. $vms VM namespaces open $tcp_per_vm TCP flows each to line-echo servers and check
#      every one, then $udp_per_vm UDP flows each; relay RSS and CPU before and after each
#      step give RSS and CPU per flow;
#   2. with all of them open, the relays' CPU while they are quiet;
#   3. every flow echoes once more (all must answer); the VMs close them; the TCP and UDP
#      gauges must drop back to zero (UDP flows end after udp_idle_timeout_secs, 10 here).
# A relay process needs one descriptor per flow, and this container's hard limit is 20,000
# open files (`ulimit -Hn`; raising it needs CAP_SYS_RESOURCE, which root here lacks), so the
# flows are spread over $relays relay processes, one LAN each, as a service past that limit
# would run them (or as a cluster's nodes do): figures are the processes' sums.
# Usage: loadtest/nat_100k.sh [--vms N] [--tcp N] [--udp N] [--relays N]
#   defaults: 100 VMs x (750 TCP + 250 UDP) over 6 relays. RELAY_BIN=path: another build.
set -euo pipefail
cd "$(dirname "$0")/.."

vms=100; tcp_per_vm=750; udp_per_vm=250; relays=6
while [ $# -gt 0 ]; do
  case "$1" in
    --vms) vms=$2; shift 2;;
    --tcp) tcp_per_vm=$2; shift 2;;
    --udp) udp_per_vm=$2; shift 2;;
    --relays) relays=$2; shift 2;;
    *) echo "nat_100k: unknown argument $1"; exit 2;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "nat_100k: needs root (network namespaces, TAP)"; exit 1; }
for tool in busybox python3 curl; do
  command -v $tool >/dev/null || { echo "nat_100k: $tool missing (bash scripts/setup-test-deps.sh)"; exit 1; }
done
[ -n "${RELAY_BIN:-}" ] || cargo build --release -q -p relay
ulimit -n "$(ulimit -Hn)"
per_relay=$(( (vms + relays - 1) / relays * (tcp_per_vm + udp_per_vm) ))
if [ $per_relay -gt $(( $(ulimit -Hn) - 500 )) ]; then
  echo "nat_100k: $per_relay flows per relay do not fit $(ulimit -Hn) descriptors; use more --relays"; exit 2
fi
tag=nk$$
source loadtest/nat_lib.sh
sync_dir=$(mktemp -d)
trap 'cleanup; rm -rf "$sync_dir"' EXIT
make_internet

# One echo server process per relay (each holds that many connections): TCP line echo on
# 7003+k, UDP echo on 7103+k.
for k in $(seq 0 $((relays - 1))); do
  start_echo_server $((7003 + k)) $((7103 + k))
done
sleep 0.5

conf=$sync_dir/relay.toml
cat > $conf <<EOC
[nat]
max_tcp_flows_per_vm = $((tcp_per_vm + 16))
max_udp_flows_per_vm = $((udp_per_vm + 16))
new_flows_per_sec = 1000
udp_idle_timeout_secs = 10
EOC
ports=(); mports=(); relay_pids=()
for _ in $(seq $relays); do
  start_relay --config $conf
  ports+=($port); mports+=($mport); relay_pids+=($relay_pid)
done

metric() { # name label -> value summed over every relay's lines matching both
  for m in "${mports[@]}"; do curl -s 127.0.0.1:$m/metrics; done |
    awk -v n="$1" -v l="$2" '$1 ~ n && $1 ~ l && $1 !~ /^#/ {s += $2} END {print s + 0}'
}
all_cpu() { local s=0; for relay_pid in "${relay_pids[@]}"; do s=$((s + $(cpu_ticks))); done; echo $s; }
all_rss() { local s=0; for relay_pid in "${relay_pids[@]}"; do s=$((s + $(rss_kib))); done; echo $s; }
per() { python3 -c "import sys; print('%.2f' % (float(sys.argv[1]) / max(1, float(sys.argv[2]))))" "$@"; }

echo "== $((vms * (tcp_per_vm + udp_per_vm))) NAT flows ($(date -u +%FT%TZ), $(nproc) cores, $vms VMs x ($tcp_per_vm TCP + $udp_per_vm UDP) over $relays relay processes, relay $relay_bin) =="
start=$(date +%s)
for i in $(seq 1 $vms); do
  port=${ports[$(( (i - 1) % relays ))]}
  new_vm ${tag}-m$i
done
echo "VMs           : $vms namespaces with leases in $(( $(date +%s) - start )) s"
sleep 1
rss0=$(all_rss)

# Each VM: open TCP flows round-robin over the echo servers and check them, say tcp-N; on
# go-udp the same for UDP, say udp-N; on go-end echo on every flow again, print
# "tcp_ok udp_ok" and exit (closing them all).
client=$client_lib'
d, n_tcp, n_udp, me, servers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
def udp_to(i): return ("198.18.50.2", 7103 + i % servers)
tcp = []
for i in range(n_tcp):
    for _ in range(3):
        try:
            tcp.append(socket.create_connection(("198.18.50.2", 7003 + i % servers), timeout=30)); break
        except OSError: time.sleep(0.5)
ok_tcp = sum(echo_tcp(s, line(i)) for i, s in enumerate(tcp))
say(d, "tcp-%s-%d" % (me, ok_tcp)); wait(d, "go-udp")
udp = []
for i in range(n_udp):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); udp.append(s)
ok_udp = sum(echo_udp(s, dgram(i), udp_to(i)) for i, s in enumerate(udp))
say(d, "udp-%s-%d" % (me, ok_udp)); wait(d, "go-end")
print(sum(echo_tcp(s, line(i)) for i, s in enumerate(tcp)), sum(echo_udp(s, dgram(i), udp_to(i)) for i, s in enumerate(udp)), flush=True)
for s in tcp + udp: s.close()
'
clients=()
t0=$(date +%s.%N); c0=$(all_cpu)
for i in $(seq 1 $vms); do
  ip netns exec ${tag}-m$i python3 -c "$client" $sync_dir $tcp_per_vm $udp_per_vm $i $relays > $sync_dir/out-$i 2>&1 & clients+=($!)
done
tcp_ok=$(wait_for tcp)
t1=$(date +%s.%N); c1=$(all_cpu)
sleep 2
rss1=$(all_rss)
tcp_open=$(metric nat_flows_active tcp)
echo "TCP flows     : $tcp_ok of $((vms * tcp_per_vm)) opened and echoed in $(per $(python3 -c "print($t1 - $t0)") 1) s, relay CPU $(per $(( (c1 - c0) * 1000000 / hz )) $tcp_ok) us per flow; gauge $tcp_open"
echo "              : relay RSS $((rss0 / 1024)) MiB -> $((rss1 / 1024)) MiB: $(per $((rss1 - rss0)) $tcp_open) KiB per TCP flow"
touch $sync_dir/go-udp
t1=$(date +%s.%N); c1=$(all_cpu)
udp_ok=$(wait_for udp)
t2=$(date +%s.%N); c2=$(all_cpu)
sleep 2
rss2=$(all_rss)
udp_open=$(metric nat_flows_active udp)
echo "UDP flows     : $udp_ok of $((vms * udp_per_vm)) opened and echoed in $(per $(python3 -c "print($t2 - $t1)") 1) s, relay CPU $(per $(( (c2 - c1) * 1000000 / hz )) $udp_ok) us per flow; gauge $udp_open"
echo "              : relay RSS $((rss1 / 1024)) MiB -> $((rss2 / 1024)) MiB: $(per $((rss2 - rss1)) $udp_open) KiB per UDP flow"
c3=$(all_cpu); sleep 5; c4=$(all_cpu)
echo "all open      : $((tcp_open + udp_open)) flows; relay RSS $((rss2 / 1024)) MiB ($(per $((rss2 - rss0)) $((tcp_open + udp_open))) KiB per flow); relay CPU $(per $(( (c4 - c3) * 100 / hz )) 5) % of a core while they are quiet"

touch $sync_dir/go-end
for pid in "${clients[@]}"; do wait $pid || true; done
read end_tcp end_udp < <(cat $sync_dir/out-* | awk 'NF == 2 && $1 ~ /^[0-9]+$/ {t += $1; u += $2} END {print t + 0, u + 0}')
echo "at the end    : $end_tcp of $tcp_ok TCP and $end_udp of $udp_ok UDP flows still echo"
closed=$(date +%s)
for _ in $(seq 120); do
  [ "$(metric nat_flows_active tcp)" = 0 ] && [ "$(metric nat_flows_active udp)" = 0 ] && break; sleep 0.5
done
echo "after close   : TCP gauge $(metric nat_flows_active tcp), UDP gauge $(metric nat_flows_active udp) after $(( $(date +%s) - closed )) s; relay RSS $(( $(all_rss) / 1024 )) MiB (at the start $((rss0 / 1024)) MiB)"
