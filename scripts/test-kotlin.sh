#!/usr/bin/env bash
# Compiles the generated Kotlin bindings plus the JUnit4 tests with kotlinc, then runs
# the tests on the JVM against the host cdylib (loaded by JNA via -Djna.library.path).
#
# Usage: scripts/test-kotlin.sh [BINDINGS_DIR] [CDYLIB_DIR] [TESTS_DIR]
#   BINDINGS_DIR  generated Kotlin sources   (default bindings/kotlin/generated;
#                 passing bindings/kotlin also works: TESTS_DIR is excluded from it)
#   CDYLIB_DIR    dir holding lib$FERRY_LIB_NAME.so (default ${CARGO_TARGET_DIR:-target}/debug)
#   TESTS_DIR     Kotlin JUnit4 test sources (default bindings/kotlin/tests)
# Env:
#   FERRY_LIB_NAME      cdylib name without lib/.so (default ferry); only used to fail early
#   FERRY_ROOT          project root the relative defaults resolve against (default: repo root)
#   KOTLIN_TEST_CLASSES space-separated test classes (default: every top-level *Test class
#                       compiled from TESTS_DIR)
#   JAVA_OPTS           extra JVM flags/system properties for the test JVM
#   CI                  if set, a missing toolchain is an error (never a skip)
#   FERRY_INSTALL_TOOLCHAIN=1  install the toolchain (scripts/kotlin-toolchain.sh) if missing
# The build output goes to ${CARGO_TARGET_DIR:-target}/kotlin-test/.
set -euo pipefail

SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${FERRY_ROOT:-$(cd "$SCRIPTS/.." && pwd)}"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"

BINDINGS_DIR="${1:-bindings/kotlin/generated}"
CDYLIB_DIR="${2:-$TARGET_DIR/debug}"
TESTS_DIR="${3:-bindings/kotlin/tests}"
LIB_NAME="${FERRY_LIB_NAME:-ferry}"
BUILD="$TARGET_DIR/kotlin-test"

die() { echo "test-kotlin: ERROR: $*" >&2; exit 1; }

# --- toolchain -------------------------------------------------------------------------
if ! "$SCRIPTS/kotlin-toolchain.sh" --check 2>/dev/null >/dev/null; then
  if [[ "${FERRY_INSTALL_TOOLCHAIN:-0}" == 1 ]]; then
    "$SCRIPTS/kotlin-toolchain.sh" >/dev/null
  elif [[ -n "${CI:-}" ]]; then
    "$SCRIPTS/kotlin-toolchain.sh" --check >/dev/null || true
    die "Kotlin toolchain missing and CI is set: run scripts/kotlin-toolchain.sh first (refusing to skip)"
  else
    "$SCRIPTS/kotlin-toolchain.sh" --check >/dev/null || true
    echo "test-kotlin: SKIP: Kotlin toolchain missing (run scripts/kotlin-toolchain.sh or set FERRY_INSTALL_TOOLCHAIN=1)" >&2
    exit 0
  fi
fi
eval "$("$SCRIPTS/kotlin-toolchain.sh" --check)"

# --- inputs ----------------------------------------------------------------------------
[[ -d "$BINDINGS_DIR" ]] || die "bindings dir $BINDINGS_DIR not found (run scripts/generate-bindings.sh)"
[[ -d "$TESTS_DIR" ]] || die "tests dir $TESTS_DIR not found"
case "$(uname -s)" in
  Darwin) LIB_FILE="$CDYLIB_DIR/lib$LIB_NAME.dylib" ;;
  *) LIB_FILE="$CDYLIB_DIR/lib$LIB_NAME.so" ;;
esac
[[ -f "$LIB_FILE" ]] || die "cdylib $LIB_FILE not found (cargo build -p <crate> first)"
CDYLIB_DIR_ABS="$(cd "$CDYLIB_DIR" && pwd)"
TESTS_ABS="$(cd "$TESTS_DIR" && pwd)"

mapfile -t MAIN_SRCS < <(find "$(cd "$BINDINGS_DIR" && pwd)" -name '*.kt' -not -path "$TESTS_ABS/*" | sort)
mapfile -t TEST_SRCS < <(find "$TESTS_ABS" -name '*.kt' | sort)
((${#MAIN_SRCS[@]})) || die "no .kt files under $BINDINGS_DIR"
((${#TEST_SRCS[@]})) || die "no .kt files under $TESTS_DIR"

# --- compile ---------------------------------------------------------------------------
# Generated bindings and tests are compiled separately: the (large) generated code is only
# recompiled when it changes, and test classes are discovered from the test output alone.
mkdir -p "$BUILD"
MAIN_OUT="$BUILD/main"
TEST_OUT="$BUILD/test"
main_stamp="$(cat "${MAIN_SRCS[@]}" | sha256sum | cut -d' ' -f1)-$(basename "$KOTLIN_HOME")"
if [[ "$(cat "$BUILD/main.stamp" 2>/dev/null)" != "$main_stamp" ]]; then
  echo "test-kotlin: kotlinc ${#MAIN_SRCS[@]} generated file(s)" >&2
  rm -rf "$MAIN_OUT" "$BUILD/main.stamp"
  # -nowarn: the generated code has harmless "expression is unused" warnings.
  "$KOTLINC" -nowarn -cp "$FERRY_KOTLIN_COMPILE_CP" -d "$MAIN_OUT" "${MAIN_SRCS[@]}"
  echo "$main_stamp" > "$BUILD/main.stamp"
fi
echo "test-kotlin: kotlinc ${#TEST_SRCS[@]} test file(s)" >&2
rm -rf "$TEST_OUT"
"$KOTLINC" -cp "$MAIN_OUT:$FERRY_KOTLIN_COMPILE_CP" -d "$TEST_OUT" "${TEST_SRCS[@]}"

# --- run -------------------------------------------------------------------------------
if [[ -n "${KOTLIN_TEST_CLASSES:-}" ]]; then
  read -r -a CLASSES <<<"$KOTLIN_TEST_CLASSES"
else
  mapfile -t CLASSES < <(cd "$TEST_OUT" && find . -name '*Test.class' -not -name '*$*' \
    | sed -e 's|^\./||' -e 's|\.class$||' -e 's|/|.|g' | sort)
fi
((${#CLASSES[@]})) || die "no *Test classes compiled from $TESTS_DIR"

JVM_FLAGS=(-Djna.library.path="$CDYLIB_DIR_ABS")
# JDK 17+: JNA calls restricted native methods; avoids "restricted method" warnings on newer JDKs.
JVM_FLAGS+=(--enable-native-access=ALL-UNNAMED)
# shellcheck disable=SC2206
JVM_FLAGS+=(${JAVA_OPTS:-})

echo "test-kotlin: running ${CLASSES[*]}" >&2
exec java "${JVM_FLAGS[@]}" -cp "$TEST_OUT:$MAIN_OUT:$FERRY_KOTLIN_RUNTIME_CP" \
  org.junit.runner.JUnitCore "${CLASSES[@]}"
