# Shared by loadtest/nat_bench.sh and loadtest/nat_scale.sh (sourced, not run): an
# "internet" namespace on 198.18.50.0/24 behind a veth pair, the relay, VM namespaces on a
# TAP each with a DHCP lease, iperf3 through them, and cleanup of all of it by PID/name.
# Needs: $tag (a short unique prefix) set before sourcing. RELAY_BIN overrides the binary
# (e.g. an older build, to compare in the same run); RELAY_ARGS adds relay arguments.

relay_bin=${RELAY_BIN:-target/release/v86-relay}
pids=()
namespaces=()
cleanup() {
  # Taps first, then the relay (they would log their reconnect attempts).
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  ip link del "${tag}h" 2>/dev/null || true
  rm -f "${udhcpc_script:-}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The "internet": 198.18.50.2 behind a veth pair whose host side is 198.18.50.1, with an
# iperf3 server on 5201.
make_internet() {
  if [ -n "$(ip route show 198.18.50.0/24)" ]; then
    echo "198.18.50.0/24 is routed already (a run that did not clean up? ip netns list)"; exit 1
  fi
  inet=${tag}-inet
  ip netns add $inet; namespaces+=($inet)
  ip -n $inet link set lo up
  ip link add ${tag}h type veth peer name ${tag}p
  ip link set ${tag}p netns $inet
  ip addr add 198.18.50.1/24 dev ${tag}h; ip link set ${tag}h up
  ip -n $inet addr add 198.18.50.2/24 dev ${tag}p; ip -n $inet link set ${tag}p up
  ip netns exec $inet iperf3 -s -p 5201 >/dev/null 2>&1 & pids+=($!)
}

# The relay on loopback ($port, metrics on $mport) with extra arguments; sets relay_pid.
# RELAY_ARGS adds more (e.g. "--config other.toml", to compare settings in one run).
start_relay() {
  port=$((20000 + RANDOM % 20000)); mport=$((port + 1))
  # shellcheck disable=SC2086 # RELAY_ARGS is a list of words
  $relay_bin --listen 127.0.0.1:$port --metrics-listen 127.0.0.1:$mport --log warn ${RELAY_ARGS:-} "$@" & relay_pid=$!; pids+=($relay_pid)
  for _ in $(seq 50); do curl -s -o /dev/null 127.0.0.1:$mport/metrics && break; sleep 0.1; done
}

udhcpc_script=$(mktemp); cat > $udhcpc_script <<'EOS'
#!/bin/sh
case "$1" in bound|renew)
  ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface"
  ip route replace default via "$router" dev "$interface";;
esac
EOS
chmod +x $udhcpc_script

# A VM namespace on LAN bench, with its lease.
new_vm() {
  local ns=$1
  ip netns add $ns; namespaces+=($ns)
  ip -n $ns link set lo up
  ip -n $ns tuntap add dev tap0 mode tap; ip -n $ns link set tap0 up
  $relay_bin tap --url ws://127.0.0.1:$port/lan/bench --dev tap0 --netns $ns --log warn & pids+=($!)
  sleep 0.2
  ip netns exec $ns busybox udhcpc -i tap0 -n -q -f -t 10 -T 1 -s $udhcpc_script >/dev/null 2>&1
}

cpu_ticks() { awk '{print $14 + $15}' /proc/$relay_pid/stat; }
rss_kib() { awk '/VmRSS/ {print $2}' /proc/$relay_pid/status; }
hz=$(getconf CLK_TCK)

iperf() { # ns, extra args -> "Gbit/s bytes"; up to 3 tries (the server may still be
  # starting, or busy with the previous run's last test), then iperf3's own error.
  local out
  for _ in 1 2 3; do
    out=$(ip netns exec "$1" iperf3 -c 198.18.50.2 -p 5201 -t $secs -J "${@:2}" || true)
    python3 -c 'import json,sys; e=json.loads(sys.argv[1])["end"]["sum_received"]; print("%.2f %d" % (e["bits_per_second"]/1e9, e["bytes"]))' "$out" 2>/dev/null && return
    sleep 1
  done
  echo "iperf3 through $1 failed: $(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("error", "no result"))' "$out" 2>/dev/null)" >&2
  return 1
}

# Line-echo servers for many flows, in the internet namespace: TCP on $1, UDP on $2.
start_echo_server() {
  ip netns exec $inet python3 -c '
import asyncio, sys
tcp_port, udp_port = int(sys.argv[1]), int(sys.argv[2])
async def echo(r, w):
    try:
        while True:
            line = await r.readline()
            if not line: break
            w.write(line); await w.drain()
    except Exception: pass
    w.close()
class Udp(asyncio.DatagramProtocol):
    def connection_made(self, t): self.t = t
    def datagram_received(self, d, a): self.t.sendto(d, a)
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Udp, local_addr=("0.0.0.0", udp_port))
    s = await asyncio.start_server(echo, "0.0.0.0", tcp_port, backlog=4096)
    await s.serve_forever()
asyncio.run(main())
' "$1" "$2" & pids+=($!)
}

# What the VMs' flow clients share (Python, put before each client's own code): steps
# signalled through files in a directory, and one echo on a TCP or UDP flow.
client_lib='
import socket, sys, os, time
def wait(d, name):
    while not os.path.exists(os.path.join(d, name)): time.sleep(0.2)
def say(d, name): open(os.path.join(d, name), "w").close()
def echo_tcp(s, msg):
    try:
        s.sendall(msg); got = b""
        while len(got) < len(msg):
            b = s.recv(65536)
            if not b: break
            got += b
        return got == msg
    except OSError: return False
def echo_udp(s, msg, to):
    for _ in range(5):
        try:
            s.sendto(msg, to)
            if s.recv(100) == msg: return True
        except OSError: pass
    return False
def line(i): return b"flow %d %s\n" % (i, os.urandom(8).hex().encode())
def dgram(i): return b"dgram %d %s" % (i, os.urandom(8).hex().encode())
'

# Waits until $vms clients have said PREFIX-VM-COUNT in $sync_dir (at most 10 minutes);
# prints the sum of the counts.
wait_for() {
  for _ in $(seq 2400); do
    [ "$(ls $sync_dir | grep -c "^$1-")" -ge $vms ] && break; sleep 0.25
  done
  ls $sync_dir | grep "^$1-" | awk -F- '{s += $3} END {print s + 0}'
}
