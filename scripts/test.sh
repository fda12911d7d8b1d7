#!/usr/bin/env bash
# Runs every test lane. README's "all tests" command; on a fresh Debian machine it
# installs what it needs first (scripts/setup.sh), and .ci/run is CI=1 plus this.
#
#   0. setup: Debian packages, the Kotlin compiler, rustfmt/clippy (scripts/setup.sh)
#   1. format and lints (cargo fmt --check, clippy -D warnings, the layer rules:
#      scripts/check-layers.sh)
#   2. PostgreSQL: start the local cluster (scripts/pg-start.sh) for the server's
#      storage suite and the end-to-end suite on PostgreSQL
#   3. cargo test --workspace (unit, store, CLI, crash, server on SQLite + PostgreSQL,
#      end-to-end sync on SQLite), then the core alone without its `ffi` feature
#   4. the end-to-end suites again with the server on PostgreSQL
#   5. bindings: generated code is current, Kotlin on the JVM against a real
#      ferry-server, the Swift C header compiles against the static library
#   6. React Native (scripts/test-react-native.sh): the generated JSI bindings are
#      current, the TS API and the Redux layer on Node against the real core and a
#      real ferry-server, tsc strict, the C++ against the JSI headers, npm pack
#   7. the demo runs and converges
#
# Under CI (env CI set) nothing is skipped: an incomplete setup, a missing PostgreSQL
# or Kotlin toolchain fails the run. Outside CI (say, no sudo or no network) those
# lanes skip with a loud message.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

lane() { printf '\n==== %s ====\n' "$*"; }
skip() {
  if [ -n "${CI:-}" ]; then echo "FAILED: $* (required under CI)" >&2; exit 1; fi
  printf '\n!!!! SKIPPED: %s !!!!\n\n' "$*" >&2
}

lane "setup"
scripts/setup.sh || skip "scripts/setup.sh could not install everything (see above)"

lane "format and lints"
scripts/check-layers.sh
if cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
  cargo clippy --workspace --all-targets -- -D warnings
  cargo clippy -p ferry --all-targets --features crash-points,sqlcipher -- -D warnings
  cargo clippy -p ferry-cli --all-targets --features crash-points -- -D warnings
else
  skip "rustfmt/clippy are not installed (rustup component add rustfmt clippy)"
fi

lane "PostgreSQL"
if [ -z "${FERRY_TEST_PG_URL:-}" ]; then
  if url=$(scripts/pg-start.sh); then
    export FERRY_TEST_PG_URL="$url"
  else
    skip "PostgreSQL could not be started (scripts/pg-start.sh); its tests will skip"
  fi
fi

lane "cargo test --workspace"
cargo test --workspace
# Kill -9 of real app processes at the core's named crash points (src/crash.rs).
cargo test -p ferry --features crash-points --test crash_points
# ferry CLI devices through the fault proxy, with CLI and server kills.
cargo test -p ferry-cli --features crash-points --test soak
# Encryption at rest: SQLite as SQLCipher (feature `sqlcipher`).
cargo test -p ferry --features sqlcipher --test encryption
# The core without its uniffi facade (feature `ffi`), as a plain Rust library.
FERRY_MODEL_CASES=200 cargo test -p ferry --no-default-features

if [ -n "${FERRY_TEST_PG_URL:-}" ]; then
  # Every suite that syncs against a real ferry-server, again with its storage on
  # PostgreSQL (their servers come from tests/support's start_server).
  lane "end-to-end suites on PostgreSQL"
  pg_suites=(sync_e2e convergence faults crash_publish watermelon_compat
    subscriptions priorities read_through retention restored_db page_sizing resolver
    host_threads shutdown offline_auth integrity)
  FERRY_E2E_BACKEND=postgres cargo test "${pg_suites[@]/#/--test=}"
fi

lane "bindings"
if [ -d bindings/kotlin/tests ]; then
  scripts/generate-bindings.sh --check
  if [ -n "${CI:-}" ] || scripts/kotlin-toolchain.sh --check >/dev/null 2>&1; then
    FERRY_INSTALL_TOOLCHAIN=1 scripts/test-kotlin-e2e.sh
  else
    skip "the Kotlin toolchain is not installed (scripts/setup.sh, scripts/kotlin-toolchain.sh)"
  fi
  scripts/check-swift-header.sh
else
  skip "no binding tests yet (bindings/kotlin/tests)"
fi

lane "React Native"
if [ -n "${CI:-}" ] || { command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 && command -v g++ >/dev/null 2>&1; }; then
  scripts/test-react-native.sh
else
  skip "node, npm or g++ is missing (scripts/setup.sh): the React Native lane"
fi

lane "demo"
cargo run -q -p ferry-cli -- demo

lane "all lanes passed"
