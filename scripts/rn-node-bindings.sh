#!/usr/bin/env bash
# Generates the N-API flavour of the React Native bindings (ubrn) into
# bindings/react-native/test/node/generated, next to a copy of the given
# libferry.so, for the Node tests (scripts/test-react-native.sh, debug core) and
# the Node bench (scripts/bench-react-native.sh, release core).
#
#   scripts/rn-node-bindings.sh <path of libferry.so>
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LIB=${1:?usage: scripts/rn-node-bindings.sh <libferry.so>}
[[ -f "$LIB" ]] || { echo "rn-node-bindings: $LIB not built" >&2; exit 1; }
UBRN=$(scripts/ubrn.sh)
NODE_GEN=bindings/react-native/test/node/generated
rm -rf "$NODE_GEN"
# ubrn reads ./Cargo.toml: run at the root
"$UBRN" generate napi bindings --library --no-format --lib-colocated \
  --ts-dir "$NODE_GEN" "$LIB" >/dev/null
cp "$LIB" "$NODE_GEN/libferry.so"
