#!/usr/bin/env bash
# The React Native bench on Node (bindings/react-native/bench/redux.bench.ts),
# against a release build of the core and of ferry-server, as an app ships
# them. Figures go in docs/benchmarks.md ("## React Native (on Node)").
# scripts/test-react-native.sh puts the debug core back for the tests.
#
#   scripts/bench-react-native.sh    # FERRY_BENCH_RN_REPS, FERRY_BENCH_RN_WRITES
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PKG=bindings/react-native
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
if [[ ! "$PKG/node_modules/.package-lock.json" -nt "$PKG/package-lock.json" ]]; then
  (cd "$PKG" && npm ci --no-audit --no-fund --loglevel=error)
fi
cargo build -q --release -p ferry --lib
cargo build -q --release -p ferry-server --bin ferry-server
scripts/rn-node-bindings.sh "$TARGET_DIR/release/libferry.so"
echo "bench-react-native: release core and server, commit $(git rev-parse --short HEAD)" >&2
(cd "$PKG" && FERRY_SERVER_BIN="$ROOT/$TARGET_DIR/release/ferry-server" \
  node --expose-gc --import tsx bench/redux.bench.ts)
