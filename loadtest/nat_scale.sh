#!/usr/bin/env bash
# NAT at scale (issue 13), in one run (needs root; traffic stays in namespaces this script
# creates, on 198.18.50.0/24, and on loopback):
#   1. a probe VM's iperf3 through NAT, both ways, with no other flow open (the anchor);
#   2. $vms VM namespaces open $tcp_per_vm idle TCP flows each to an echo server, then
#      $udp_per_vm UDP flows each, every flow checked by an echo; relay RSS before and after
#      each step gives RSS per idle TCP flow and per UDP flow;
#   3. the probe VM's iperf3 again, both ways, with all those flows open: the ratio to 1.;
#   4. busy, then quiet: $bulk_per_vm flows of each VM echo 4 x 60 KiB at once; relay RSS
#      right after and 2 s later (quiet flows give their buffers' pages back);
#   5. every flow echoes once more (all must answer), then they close; the TCP flow gauge
#      must drop back to zero.
# Usage: loadtest/nat_scale.sh [--vms N] [--tcp N] [--udp N] [--secs S]
#   defaults: 100 VMs x 100 TCP + 95 UDP, iperf3 10 s. RELAY_BIN=path: another build.
# The relay needs one descriptor per flow: 10,000 + 9,500 fit this container's hard limit
# of 20,000 open files (ulimit -Hn), 10,000 + 10,000 do not.
set -euo pipefail
cd "$(dirname "$0")/.."

vms=100; tcp_per_vm=100; udp_per_vm=95; secs=10; bulk_per_vm=10
while [ $# -gt 0 ]; do
  case "$1" in
    --vms) vms=$2; shift 2;;
    --tcp) tcp_per_vm=$2; shift 2;;
    --udp) udp_per_vm=$2; shift 2;;
    --secs) secs=$2; shift 2;;
    *) echo "nat_scale: unknown argument $1"; exit 2;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "nat_scale: needs root (network namespaces, TAP)"; exit 1; }
for tool in iperf3 busybox python3 curl; do
  command -v $tool >/dev/null || { echo "nat_scale: $tool missing (bash scripts/setup-test-deps.sh)"; exit 1; }
done
[ -n "${RELAY_BIN:-}" ] || cargo build --release -q -p relay
ulimit -n "$(ulimit -Hn)"
tag=ns$$
source loadtest/nat_lib.sh
sync_dir=$(mktemp -d)
trap 'cleanup; rm -rf "$sync_dir"' EXIT
make_internet

# Echo servers for many flows: TCP on 7003 (line echo), UDP on 7004.
start_echo_server 7003 7004
sleep 0.5

conf=$sync_dir/relay.toml
cat > $conf <<EOC
[nat]
max_tcp_flows_per_vm = $((tcp_per_vm + 16))
max_udp_flows_per_vm = $((udp_per_vm + 16))
EOC
start_relay --config $conf

metric() { # name label -> value summed over lines matching both
  curl -s 127.0.0.1:$mport/metrics | awk -v n="$1" -v l="$2" '$1 ~ n && $1 ~ l && $1 !~ /^#/ {s += $2} END {print s + 0}'
}

echo "== NAT at scale ($(date -u +%FT%TZ), $(nproc) cores, $vms VMs x ($tcp_per_vm TCP + $udp_per_vm UDP), iperf3 ${secs}s, relay $relay_bin) =="
probe=${tag}-probe; new_vm $probe
read up0 _ < <(iperf $probe)
read down0 _ < <(iperf $probe -R)
echo "no flows open : probe VM->internet $up0 Gbit/s, internet->VM $down0 Gbit/s"

for i in $(seq 1 $vms); do new_vm ${tag}-m$i; done
sleep 1
rss0=$(rss_kib)

# Each VM: open TCP flows and check them, say tcp-ready; on go-udp open UDP flows and check
# them, say udp-ready; on go-end echo on every flow again and print "tcp_ok udp_ok".
client=$client_lib'
d, n_tcp, n_udp, me, n_bulk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
udp_to = ("198.18.50.2", 7004)
tcp = []
for i in range(n_tcp):
    try: tcp.append(socket.create_connection(("198.18.50.2", 7003), timeout=30))
    except OSError: pass
ok_tcp = sum(echo_tcp(s, line(i)) for i, s in enumerate(tcp))
say(d, "tcp-%s-%d" % (me, ok_tcp)); wait(d, "go-udp")
udp = []
for i in range(n_udp):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); udp.append(s)
ok_udp = sum(echo_udp(s, dgram(i), udp_to) for i, s in enumerate(udp))
say(d, "udp-%s-%d" % (me, ok_udp)); wait(d, "go-bulk")
def bulk(i): return b"".join(b"%d %s\n" % (i, os.urandom(30 * 1024).hex().encode()) for _ in range(4))
ok_bulk = sum(echo_tcp(s, bulk(i)) for i, s in enumerate(tcp[:n_bulk]))
say(d, "bulk-%s-%d" % (me, ok_bulk)); wait(d, "go-end")
print(sum(echo_tcp(s, line(i)) for i, s in enumerate(tcp)), sum(echo_udp(s, dgram(i), udp_to) for i, s in enumerate(udp)))
'
clients=()
t0=$(date +%s.%N); c0=$(cpu_ticks)
for i in $(seq 1 $vms); do
  ip netns exec ${tag}-m$i python3 -c "$client" $sync_dir $tcp_per_vm $udp_per_vm $i $bulk_per_vm > $sync_dir/out-$i 2>&1 & clients+=($!)
done
tcp_ok=$(wait_for tcp)
t1=$(date +%s.%N); c1=$(cpu_ticks)
sleep 2
rss1=$(rss_kib)
tcp_open=$(metric nat_flows_active tcp)
echo "TCP flows     : $tcp_ok of $((vms * tcp_per_vm)) opened and echoed in $(python3 -c "print('%.1f' % ($t1 - $t0))") s, relay CPU $(python3 -c "print('%.0f' % ((($c1-$c0)/$hz) * 1e6 / max(1, $tcp_ok)))") us per flow; gauge $tcp_open"
echo "              : relay RSS $((rss0 / 1024)) MiB -> $((rss1 / 1024)) MiB: $(python3 -c "print('%.2f' % (($rss1 - $rss0) / max(1, $tcp_open)))") KiB per idle TCP flow; buffers released $(metric nat_buffer_releases_total "") times"
touch $sync_dir/go-udp
t1=$(date +%s.%N); c1=$(cpu_ticks)
udp_ok=$(wait_for udp)
t2=$(date +%s.%N); c2=$(cpu_ticks)
sleep 2
rss2=$(rss_kib)
udp_open=$(metric nat_flows_active udp)
echo "UDP flows     : $udp_ok of $((vms * udp_per_vm)) opened and echoed in $(python3 -c "print('%.1f' % ($t2 - $t1))") s, relay CPU $(python3 -c "print('%.0f' % ((($c2-$c1)/$hz) * 1e6 / max(1, $udp_ok)))") us per flow; gauge $udp_open"
echo "              : relay RSS $((rss1 / 1024)) MiB -> $((rss2 / 1024)) MiB: $(python3 -c "print('%.2f' % (($rss2 - $rss1) / max(1, $udp_open)))") KiB per UDP flow; buffers $(metric nat_buffer_bytes '') bytes"
c3=$(cpu_ticks); sleep 5; c4=$(cpu_ticks)
echo "idle          : relay CPU $(python3 -c "print('%.1f' % ((($c4-$c3)/$hz) / 5 * 100))") % of a core with $((tcp_open + udp_open)) flows open and quiet"

read up1 _ < <(iperf $probe)
read down1 _ < <(iperf $probe -R)
echo "flows open    : probe VM->internet $up1 Gbit/s ($(python3 -c "print('%.2f' % ($up1 / $up0))")x), internet->VM $down1 Gbit/s ($(python3 -c "print('%.2f' % ($down1 / $down0))")x)"

touch $sync_dir/go-bulk
bulk_ok=$(wait_for bulk)
rss3=$(rss_kib)
sleep 2
rss4=$(rss_kib)
echo "busy, quiet   : $bulk_ok of $((vms * bulk_per_vm)) flows echoed 240 KiB each: relay RSS $((rss3 / 1024)) MiB right after, $((rss4 / 1024)) MiB 2 s later; buffers released $(metric nat_buffer_releases_total "") times"

touch $sync_dir/go-end
for pid in "${clients[@]}"; do wait $pid || true; done
read end_tcp end_udp < <(cat $sync_dir/out-* | awk 'NF == 2 && $1 ~ /^[0-9]+$/ {t += $1; u += $2} END {print t + 0, u + 0}')
echo "at the end    : $end_tcp of $tcp_ok TCP and $end_udp of $udp_ok UDP flows still echo"
for _ in $(seq 40); do [ "$(metric nat_flows_active tcp)" = 0 ] && break; sleep 0.25; done
echo "after close   : TCP flow gauge $(metric nat_flows_active tcp), UDP $(metric nat_flows_active udp) (UDP flows end after udp_idle_timeout_secs); relay RSS $(( $(rss_kib) / 1024 )) MiB"
