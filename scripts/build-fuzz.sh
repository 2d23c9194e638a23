#!/usr/bin/env bash
# Builds every fuzz target (CI checks they build; long runs belong in benchmarks).
# cargo fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
RUSTC_BOOTSTRAP=1 cargo fuzz build -O 2>&1 | sed "/^ *Compiling /d" | tail -n 15
echo "fuzz: built $(grep -c '^\[\[bin\]\]' fuzz/Cargo.toml) targets: $(grep '^name = ' fuzz/Cargo.toml | tail -n +2 | cut -d'"' -f2 | tr '\n' ' ')"
