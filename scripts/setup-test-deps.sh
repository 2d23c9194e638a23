#!/usr/bin/env bash
# Installs the system tools the tests drive (real Linux network stacks and clients).
# Idempotent: does nothing when everything is already there.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip || need+=(iproute2)
have ping || need+=(iputils-ping)
have iperf3 || need+=(iperf3)
have busybox || need+=(busybox)
have dhclient || need+=(isc-dhcp-client)
have dig || need+=(dnsutils)
have dnsmasq || need+=(dnsmasq-base)
have pgrep || need+=(procps)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
