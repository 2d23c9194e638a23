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
have curl || need+=(curl)
have chromium || need+=(chromium)
have slirp4netns || need+=(slirp4netns)
have node || need+=(nodejs)
have npm || need+=(npm)
# tshark reads the pcapng of relay/tests/classroom.rs; its debconf question (non-root capture)
# is answered by DEBIAN_FRONTEND=noninteractive below.
have tshark || need+=(tshark)
# nats-server (with JetStream) joins relay nodes in relay/tests/cluster.rs.
have nats-server || need+=(nats-server)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# JavaScript test dependencies (playwright-core drives Debian's chromium; never a browser download;
# wisp-js is the third-party Wisp client of relay/tests/wisp.rs).
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
js_modules="$here/tests/js/node_modules"
if [ ! -d "$js_modules/playwright-core" ] || [ ! -d "$js_modules/ws" ] || [ ! -d "$js_modules/@mercuryworkshop/wisp-js" ]; then
  echo "setup: npm ci in tests/js"
  (cd "$here/tests/js" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi

# The demo guest and v86 for relay/tests/v86.rs: npm packages and the guest image built from
# Debian packages into vendor/v86/out (ignored by git; reused while its inputs are unchanged).
if [ ! -f "$here/vendor/v86/node_modules/v86/build/libv86.mjs" ] || [ ! -d "$here/vendor/v86/node_modules/@xterm/xterm" ]; then
  echo "setup: npm ci in vendor/v86"
  (cd "$here/vendor/v86" && npm ci --no-audit --no-fund --loglevel=error)
fi
"$here/vendor/v86/build-guest.sh"
