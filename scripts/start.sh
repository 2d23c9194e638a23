#!/usr/bin/env bash
# Builds and starts the relay. Extra arguments go to v86-relay (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet --bin v86-relay
exec target/release/v86-relay --listen "${V86_RELAY_LISTEN:-0.0.0.0:8086}" "$@"
