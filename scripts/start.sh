#!/usr/bin/env bash
# Builds and starts the relay with the bundled demo. Extra arguments go to v86-relay (see --help).
# On first use it installs v86 and xterm.js with npm (vendor/v86/node_modules) and builds the
# demo guest from Debian packages (vendor/v86/out); both are skipped once present.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f vendor/v86/node_modules/v86/build/libv86.mjs ] || [ ! -d vendor/v86/node_modules/@xterm/xterm ]; then
  command -v npm >/dev/null || { echo "start: npm is needed to install v86 for the demo (e.g. apt-get install npm)" >&2; exit 1; }
  echo "start: installing v86 and xterm.js with npm into vendor/v86/node_modules"
  (cd vendor/v86 && npm ci --no-audit --no-fund --loglevel=error)
fi
vendor/v86/build-guest.sh
cargo build --release --locked --quiet --bin v86-relay
# Listens on 0.0.0.0:8086 unless --listen or V86_RELAY_LISTEN says otherwise.
listen="${V86_RELAY_LISTEN:-0.0.0.0:8086}"
prev=""
for arg in "$@"; do
  case "$arg" in --listen=*) listen="${arg#--listen=}" ;; esac
  [ "$prev" = "--listen" ] && listen="$arg"
  prev="$arg"
done
port="${listen##*:}"
host="${listen%:*}"
case "$host" in 0.0.0.0 | "[::]") host=127.0.0.1 ;; esac
echo "start: open http://$host:$port/?lan=demo in a browser and press Boot; open the same link in more tabs (or on other computers) to put their VMs on one LAN"
exec target/release/v86-relay "$@"
