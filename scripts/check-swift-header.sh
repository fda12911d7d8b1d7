#!/usr/bin/env bash
# Compile-checks the generated Swift FFI C header with gcc and links it against the Rust
# static library (there is no Swift toolchain here). Generates a C program that
#   1. includes <FFI module>.h under -std=c11 -Wall -Wextra -Werror,
#   2. takes the address of every uniffi_*/ffi_* function the header declares, so the link
#      against lib<name>.a proves each one exists,
#   3. replays the Swift bindings' load-time checks (contract version + API checksums
#      parsed from <Module>.swift) by calling into the static library, then runs it.
#
# Usage: scripts/check-swift-header.sh [SWIFT_DIR] [STATICLIB]
#   SWIFT_DIR  generated Swift sources (default bindings/swift/generated)
#   STATICLIB  (default ${CARGO_TARGET_DIR:-target}/debug/lib$FERRY_LIB_NAME.a)
# Env: FERRY_ROOT, FERRY_LIB_NAME (default ferry), SWIFT_MODULE (default Ferry),
#      SWIFT_FFI_MODULE (default ${SWIFT_MODULE}FFI), CC (default gcc),
#      NATIVE_LIBS (system libs the Rust staticlib needs; default below, see
#      `cargo rustc -p ferry --lib --crate-type staticlib -- --print native-static-libs`).
# The staticlib must be current: build it with `cargo build -p ferry --lib` (the
# generate-bindings script does that).
set -euo pipefail

ROOT="${FERRY_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
LIB_NAME="${FERRY_LIB_NAME:-ferry}"
SWIFT_DIR="${1:-bindings/swift/generated}"
STATICLIB="${2:-$TARGET_DIR/debug/lib$LIB_NAME.a}"
MODULE="${SWIFT_MODULE:-Ferry}"
FFI_MODULE="${SWIFT_FFI_MODULE:-${MODULE}FFI}"
CC="${CC:-gcc}"
NATIVE_LIBS="${NATIVE_LIBS:--lgcc_s -lutil -lrt -lpthread -lm -ldl -lc}"

HEADER="$SWIFT_DIR/$FFI_MODULE.h"
SWIFT_SRC="$SWIFT_DIR/$MODULE.swift"
die() { echo "check-swift-header: ERROR: $*" >&2; exit 1; }
[[ -f "$HEADER" ]] || die "$HEADER not found (run scripts/generate-bindings.sh)"
[[ -f "$SWIFT_SRC" ]] || die "$SWIFT_SRC not found"
[[ -f "$STATICLIB" ]] || die "$STATICLIB not found (cargo build -p <crate> --lib)"
[[ -f "$SWIFT_DIR/$FFI_MODULE.modulemap" ]] || die "$SWIFT_DIR/$FFI_MODULE.modulemap not found"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/ferry-swift-header.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# Function declarations: `<type> uniffi_xxx(` / `<type> ffi_xxx(` at the start of a line
# (typedef'd callback types are `(*Name)` and are skipped).
mapfile -t FUNCS < <(grep -E '^[A-Za-z_][A-Za-z0-9_ *]*[ *](uniffi|ffi)_[A-Za-z0-9_]+\(' "$HEADER" \
  | grep -v '^typedef' | sed -E 's/^.*[ *]((uniffi|ffi)_[A-Za-z0-9_]+)\(.*$/\1/' | sort -u)
((${#FUNCS[@]})) || die "no uniffi functions declared in $HEADER"

contract_fn="$(printf '%s\n' "${FUNCS[@]}" | grep -E '^ffi_.*_uniffi_contract_version$' || true)"
contract_expected="$(sed -nE 's/^[[:space:]]*let bindings_contract_version = ([0-9]+).*$/\1/p' "$SWIFT_SRC" | head -n1)"
[[ -n "$contract_fn" && -n "$contract_expected" ]] || die "cannot find the contract version check"

{
  echo '#include <stdio.h>'
  echo "#include \"$FFI_MODULE.h\""
  echo 'typedef void (*ferry_any_fn)(void);'
  echo 'static ferry_any_fn const ferry_all_symbols[] = {'
  for f in "${FUNCS[@]}"; do echo "    (ferry_any_fn)&$f,"; done
  echo '};'
  echo 'int main(void) {'
  echo '    int failures = 0;'
  echo '    size_t n = sizeof ferry_all_symbols / sizeof ferry_all_symbols[0];'
  echo '    for (size_t i = 0; i < n; i++) {'
  echo '        if (ferry_all_symbols[i] == 0) { fprintf(stderr, "null symbol %zu\n", i); failures++; }'
  echo '    }'
  echo "    if ($contract_fn() != $contract_expected) {"
  echo "        fprintf(stderr, \"contract version mismatch: lib %u, bindings $contract_expected\\n\", (unsigned)$contract_fn());"
  echo '        failures++;'
  echo '    }'
  # Swift: `if (uniffi_x_checksum_y() != 1234) {`
  sed -nE 's/^[[:space:]]*if \((uniffi_[A-Za-z0-9_]+_checksum_[A-Za-z0-9_]+)\(\) != ([0-9]+)\).*$/\1 \2/p' "$SWIFT_SRC" \
    | while read -r fn want; do
        echo "    if ($fn() != $want) { fprintf(stderr, \"checksum mismatch: $fn = %u, bindings expect $want\\n\", (unsigned)$fn()); failures++; }"
      done
  echo '    printf("check-swift-header: %zu FFI symbols linked, contract version and checksums match\n", n);'
  echo '    return failures ? 1 : 0;'
  echo '}'
} > "$tmp/check.c"

# The header uses clang nullability qualifiers; gcc does not know them.
CFLAGS=(-std=c11 -Wall -Wextra -Werror -D_Nullable= -D_Nonnull= -D_Null_unspecified= -I "$SWIFT_DIR")
echo "check-swift-header: $CC ${#FUNCS[@]} declarations from $HEADER against $STATICLIB" >&2
# shellcheck disable=SC2086
"$CC" "${CFLAGS[@]}" "$tmp/check.c" "$STATICLIB" $NATIVE_LIBS -o "$tmp/check" \
  || die "compile/link of $HEADER against $STATICLIB failed"
"$tmp/check" || die "runtime contract/checksum check failed (stale bindings or staticlib?)"
