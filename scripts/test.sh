#!/usr/bin/env bash
# The project's test command (README). Installs what the tests need, builds once, runs
# every suite, builds the fuzz targets, and prints each suite's summary line at the end.
# Tests that need root skip without it; V86_RELAY_REQUIRE_ROOT=1 (set by .ci/run) makes
# such a skip a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT

scripts/setup-test-deps.sh
# A build that runs out of disk fails in the linker with a bus error, which names no cause:
# say how much room there is first. The build and the fuzz targets take about 4.5 GB.
free_kib=$(df -Pk . | awk 'NR==2 {print $4}')
echo "disk: $((free_kib / 1024 / 1024)) GiB free for the build in $(pwd)"
if [ "$free_kib" -lt $((5 * 1024 * 1024)) ]; then
  echo "disk: warning: under 5 GiB free; the build may fail in the linker (free space, or set CARGO_TARGET_DIR to a larger disk)" >&2
fi
cargo fmt --all -- --check
# The layer check reads the dependency graph offline: fetch the locked crates first (a fresh
# machine has none yet).
cargo fetch --locked --quiet
# One-way layers (docs/architecture.md): fails on a back-edge; the self-test proves it would.
python3 scripts/check-layers.py --self-test
python3 scripts/check-layers.py
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings
cargo build --workspace --all-targets --locked --quiet
status=0
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log" || status=$?
scripts/build-fuzz.sh || status=$?

echo
echo "== summary =="
awk '/^ +Running /{name=$2} /^ +Doc-tests /{name="doc-tests " $2} /^test result:/{printf "%-40s %s\n", name, $0}' "$log" || true
if grep -q '^SKIPPED' "$log"; then grep '^SKIPPED' "$log"; fi
exit $status
