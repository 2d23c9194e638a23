#!/usr/bin/env bash
# Builds and starts the relay. Extra arguments go to v86-relay (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet --bin v86-relay
# Listens on 0.0.0.0:8086 unless --listen or V86_RELAY_LISTEN says otherwise.
exec target/release/v86-relay "$@"
