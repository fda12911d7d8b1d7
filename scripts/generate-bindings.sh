#!/usr/bin/env bash
# Builds the core cdylib and regenerates the uniffi bindings (library mode) with the
# workspace's pinned uniffi-bindgen:
#   bindings/kotlin/generated/dev/ferry/ferry.kt
#   bindings/swift/generated/{Ferry.swift,FerryFFI.h,FerryFFI.modulemap}
#
# Usage:
#   scripts/generate-bindings.sh          # regenerate in place
#   scripts/generate-bindings.sh --check  # regenerate into a temp dir and diff against the
#                                         # checked-in output; exit 1 if stale
# Env overrides (defaults match this repo):
#   FERRY_ROOT       project root (default: the repo containing this script)
#   FERRY_CRATE      cargo package holding the uniffi exports (default ferry)
#   FERRY_LIB_NAME   its library name, i.e. lib<name>.so (default ferry)
#   UNIFFI_CONFIG    uniffi config (default uniffi.toml)
#   KOTLIN_OUT       (default bindings/kotlin/generated)
#   SWIFT_OUT        (default bindings/swift/generated)
#   CARGO_TARGET_DIR (default target)
#   CARGO_BUILD_JOBS is honoured by cargo as usual.
#
# Formatting is disabled (--no-format) so the output does not depend on whether ktlint or
# swiftformat happen to be installed; otherwise --check would flap between machines.
set -euo pipefail

ROOT="${FERRY_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
cd "$ROOT"
CRATE="${FERRY_CRATE:-ferry}"
LIB_NAME="${FERRY_LIB_NAME:-ferry}"
CONFIG="${UNIFFI_CONFIG:-uniffi.toml}"
KOTLIN_OUT="${KOTLIN_OUT:-bindings/kotlin/generated}"
SWIFT_OUT="${SWIFT_OUT:-bindings/swift/generated}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"

check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

case "$(uname -s)" in
  Darwin) LIB_FILE="$TARGET_DIR/debug/lib$LIB_NAME.dylib" ;;
  *) LIB_FILE="$TARGET_DIR/debug/lib$LIB_NAME.so" ;;
esac

echo "generate-bindings: cargo build -p $CRATE --lib" >&2
cargo build -p "$CRATE" --lib
echo "generate-bindings: cargo build -p uniffi-bindgen" >&2
cargo build -p uniffi-bindgen
BINDGEN="$TARGET_DIR/debug/uniffi-bindgen"
[[ -f "$LIB_FILE" ]] || { echo "generate-bindings: $LIB_FILE not built" >&2; exit 1; }

config_args=()
[[ -f "$CONFIG" ]] && config_args=(--config "$CONFIG")

tmp="$(mktemp -d "${TMPDIR:-/tmp}/ferry-bindings.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

gen() { # language out-dir
  "$BINDGEN" generate "$LIB_FILE" --language "$1" --out-dir "$2" --no-format "${config_args[@]}"
}
gen kotlin "$tmp/kotlin"
gen swift "$tmp/swift"

# Guard against a library without any uniffi exports silently producing "bindings".
if ! grep -rqsE 'uniffi_[A-Za-z0-9_]+_fn_' "$tmp/swift"; then
  echo "generate-bindings: no exported uniffi API found in $LIB_FILE (no #[uniffi::export]s yet?)" >&2
  exit 1
fi

if ((check)); then
  stale=0
  for pair in "kotlin:$KOTLIN_OUT" "swift:$SWIFT_OUT"; do
    lang="${pair%%:*}"; dir="${pair#*:}"
    if [[ ! -d "$dir" ]]; then
      echo "generate-bindings: STALE: $dir does not exist" >&2; stale=1; continue
    fi
    if ! diff -ru "$dir" "$tmp/$lang" > "$tmp/$lang.diff"; then
      echo "generate-bindings: STALE: $dir differs from freshly generated $lang bindings:" >&2
      head -n 60 "$tmp/$lang.diff" >&2
      stale=1
    fi
  done
  if ((stale)); then
    echo "generate-bindings: run scripts/generate-bindings.sh and commit the result" >&2
    exit 1
  fi
  echo "generate-bindings: checked-in bindings are up to date" >&2
else
  for pair in "kotlin:$KOTLIN_OUT" "swift:$SWIFT_OUT"; do
    lang="${pair%%:*}"; dir="${pair#*:}"
    rm -rf "$dir"
    mkdir -p "$(dirname "$dir")"
    cp -R "$tmp/$lang" "$dir"
    echo "generate-bindings: wrote $dir" >&2
  done
fi
