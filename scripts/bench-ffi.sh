#!/usr/bin/env bash
# FFI benchmarks on the Kotlin JVM (docs/benchmarks.md, "## FFI"):
#   1. builds the ferry cdylib in release with `--features ffi-bench` (adds the
#      typed-record variants and the Rust baseline; never shipped),
#   2. generates Kotlin bindings from it into a temp dir,
#   3. compiles bindings/kotlin/bench/FfiBench.kt against them and runs it.
# Prints a Markdown table of medians.
#
# Env: CARGO_TARGET_DIR (default target).
set -euo pipefail

SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPTS/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"

eval "$("$SCRIPTS/kotlin-toolchain.sh" --check)"
cargo build --release -p ferry --lib --features ffi-bench
cargo build -p uniffi-bindgen
LIB="$TARGET_DIR/release/libferry.so"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/ferry-ffi-bench.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
"$TARGET_DIR/debug/uniffi-bindgen" generate "$LIB" --language kotlin --out-dir "$tmp/gen" \
  --no-format --config uniffi.toml
mkdir -p "$tmp/lib"
cp "$LIB" "$tmp/lib/"
"$KOTLINC" -nowarn -cp "$FERRY_KOTLIN_COMPILE_CP" -d "$tmp/classes" \
  $(find "$tmp/gen" -name '*.kt') bindings/kotlin/bench/FfiBench.kt 2>&1 | grep -v '^warning' >&2 || true
java -Djna.library.path="$tmp/lib" --enable-native-access=ALL-UNNAMED \
  -cp "$tmp/classes:$FERRY_KOTLIN_RUNTIME_CP" dev.ferry.bench.FfiBenchKt
