#!/usr/bin/env bash
# The React Native lane (scripts/test.sh calls it):
#   1. npm ci in bindings/react-native (if node_modules is stale), the ubrn CLI
#      (scripts/ubrn.sh: built once, cached)
#   2. the committed JSI bindings (src/generated TS, cpp/generated C++) are what
#      ubrn generates from today's core, and example/rows.ts what `ferry schema ts`
#      prints (--write regenerates them)
#   3. Node: the N-API flavour of the same bindings, generated next to a copy of
#      the debug libferry.so, runs test/node/*.test.ts against the real core and a
#      ferry-server the tests start
#   4. tsc --noEmit, strict, on the package and on example/
#   5. the generated and glue C++ pass g++ -std=c++20 -fsyntax-only against the JSI
#      headers of the react-native npm package
#   6. npm pack holds the TS, the C++ and the Android and iOS glue
# Nothing here skips: a missing tool fails the lane (scripts/setup.sh installs them).
#
#   scripts/test-react-native.sh           # check and test
#   scripts/test-react-native.sh --write   # regenerate the committed bindings first
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PKG=bindings/react-native
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
say() { echo "test-react-native: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }
write=0
[[ "${1:-}" == --write ]] && write=1

# 1. tools
if [[ ! "$PKG/node_modules/.package-lock.json" -nt "$PKG/package-lock.json" ]]; then
  say "npm ci in $PKG"
  (cd "$PKG" && npm ci --no-audit --no-fund --loglevel=error)
fi
UBRN=$(scripts/ubrn.sh)
command -v g++ >/dev/null || die "g++ is missing (scripts/setup.sh)"

say "cargo build -p ferry --lib; cargo build -p ferry-server"
cargo build -q -p ferry --lib
cargo build -q -p ferry-server --bin ferry-server
LIB="$ROOT/$TARGET_DIR/debug/libferry.so"
[[ -f "$LIB" ]] || die "$LIB not built"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferry-rn.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# 2. the committed JSI bindings are current (ubrn reads ./Cargo.toml: run at the root)
"$UBRN" generate jsi bindings --library --no-format \
  --ts-dir "$tmp/ts" --cpp-dir "$tmp/cpp" "$LIB" >/dev/null
if ((write)); then
  rm -rf "$PKG/src/generated" "$PKG/cpp/generated"
  mkdir -p "$PKG/src/generated" "$PKG/cpp/generated"
  cp "$tmp"/ts/* "$PKG/src/generated/"
  cp "$tmp"/cpp/* "$PKG/cpp/generated/"
  say "wrote $PKG/src/generated and $PKG/cpp/generated"
fi
diff -r "$tmp/ts" "$PKG/src/generated" >/dev/null && diff -r "$tmp/cpp" "$PKG/cpp/generated" >/dev/null ||
  die "the committed JSI bindings are stale: run scripts/test-react-native.sh --write"
say "the JSI bindings in $PKG are current"
cargo run -q -p ferry-cli -- schema ts --schema examples/tasks.schema.json >"$tmp/rows.ts"
if ((write)); then cp "$tmp/rows.ts" "$PKG/example/rows.ts"; fi
diff "$tmp/rows.ts" "$PKG/example/rows.ts" >/dev/null ||
  die "$PKG/example/rows.ts is not what \`ferry schema ts\` prints: run scripts/test-react-native.sh --write"

# 3. Node (N-API) against the real core and a real server
scripts/rn-node-bindings.sh "$LIB"
say "node --test test/node/*.test.ts"
(cd "$PKG" && FERRY_SERVER_BIN="$ROOT/$TARGET_DIR/debug/ferry-server" \
  node --expose-gc --import tsx --test --test-concurrency=1 test/node/*.test.ts)

# 4. TypeScript, strict
(cd "$PKG" && npx tsc --noEmit -p tsconfig.json && npx tsc --noEmit -p example/tsconfig.json &&
  npx tsc --noEmit -p test/node/tsconfig.json)
say "tsc --noEmit (strict): package, example, tests"

# 5. the C++ against the JSI headers of the react-native package
RN_COMMON="$PKG/node_modules/react-native/ReactCommon"
UBRN_CPP="$PKG/node_modules/uniffi-bindgen-react-native/cpp/includes"
for std in c++20 c++17; do
  g++ -std=$std -fsyntax-only -Wall -Werror \
    -I "$RN_COMMON/jsi" -I "$RN_COMMON/callinvoker" -I "$RN_COMMON" -I "$UBRN_CPP" \
    -I "$PKG/cpp" -I "$PKG/cpp/generated" \
    "$PKG/cpp/generated/ferry.cpp" "$PKG/cpp/react-native-ferry.cpp"
done
say "the generated C++ compiles (g++ -std=c++20 and c++17, -fsyntax-only) against JSI $(node -p "require('./$RN_COMMON/../package.json').version")"

# 6. the npm tarball
(cd "$PKG" && npm pack --dry-run --json 2>/dev/null) >"$tmp/pack.json"
for f in src/index.tsx src/api.ts src/redux/index.ts src/generated/ferry.ts src/generated/ferry-ffi.ts \
  cpp/generated/ferry.cpp cpp/generated/ferry.hpp cpp/react-native-ferry.cpp \
  android/CMakeLists.txt android/cpp-adapter.cpp android/build.gradle \
  android/src/main/AndroidManifest.xml android/src/main/AndroidManifestNew.xml android/proguard-rules.pro \
  android/src/main/java/dev/ferry/reactnative/FerryModule.kt \
  android/src/main/java/dev/ferry/reactnative/FerryPackage.kt src/NativeFerry.ts \
  ios/Ferry.mm ios/Ferry.h Ferry.podspec react-native.config.js; do
  grep -q "\"path\": \"$f\"" "$tmp/pack.json" || die "npm pack is missing $f"
done
# What build.gradle and the podspec name must be in the package: the Gradle
# files it points at, and the xcframework (built on a Mac) in `files`.
for f in $(sed -n 's/.*manifest.srcFile "\(.*\)".*/\1/p; s/.*consumerProguardFiles .\(.*\)./\1/p' "$PKG/android/build.gradle"); do
  [[ -f "$PKG/android/$f" ]] || die "android/build.gradle names android/$f, which does not exist"
done
framework=$(sed -n 's/.*vendored_frameworks = "\(.*\)".*/\1/p' "$PKG/Ferry.podspec")
node -e "process.exit(require(require('path').resolve('$PKG/package.json')).files.includes('$framework') ? 0 : 1)" \
  || die "package.json files leaves out $framework, which Ferry.podspec vendors"
say "npm pack holds the TS, the C++ and the Android and iOS glue"
