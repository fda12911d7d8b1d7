#!/usr/bin/env bash
# Prints the path of the uniffi-bindgen-react-native (ubrn) CLI, building it first
# if needed. ubrn ships as Rust source inside its npm package (pinned in
# bindings/react-native/package.json); it is built once per version, with the
# crate versions pinned by bindings/react-native/ubrn-<version>.Cargo.lock, into
# a cache outside the work tree ($FERRY_TOOLS_DIR, default ~/.cache/ferry) so
# later runs and fresh clones on this machine reuse it.
#
#   scripts/ubrn.sh           # build if missing, print the binary's path
#   scripts/ubrn.sh --check   # print the path if built, else fail
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PKG=bindings/react-native
VERSION=$(node -p "require('./$PKG/package.json').dependencies['uniffi-bindgen-react-native']")
SRC="$PKG/node_modules/uniffi-bindgen-react-native"
OUT="${FERRY_TOOLS_DIR:-$HOME/.cache/ferry}/ubrn-$VERSION"
BIN="$OUT/release/uniffi-bindgen-react-native"

if [[ -x "$BIN" ]]; then echo "$BIN"; exit 0; fi
[[ "${1:-}" == --check ]] && { echo "ubrn: $BIN is not built (scripts/ubrn.sh)" >&2; exit 1; }
[[ -f "$SRC/package.json" ]] || { echo "ubrn: $SRC missing: npm ci in $PKG first" >&2; exit 1; }
have=$(node -p "require('./$SRC/package.json').version")
[[ "$have" == "$VERSION" ]] || { echo "ubrn: $SRC is $have, not $VERSION" >&2; exit 1; }
cp "$PKG/ubrn-$VERSION.Cargo.lock" "$SRC/Cargo.lock"
echo "ubrn: building uniffi-bindgen-react-native $VERSION (once; a few minutes)" >&2
CARGO_TARGET_DIR="$OUT" cargo build --release --locked --quiet \
  --manifest-path "$SRC/crates/ubrn_cli/Cargo.toml" --bin uniffi-bindgen-react-native >&2
echo "$BIN"
