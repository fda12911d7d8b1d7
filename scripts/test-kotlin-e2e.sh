#!/usr/bin/env bash
# Kotlin JUnit4 tests of the generated bindings against a REAL ferry-server:
#   1. builds the ferry cdylib and the ferry-server binary,
#   2. starts ferry-server on a free port (--listen 127.0.0.1:0, built-in dev config)
#      with a temp SQLite database,
#   3. runs scripts/test-kotlin.sh with -Dferry.server.url=<its URL>,
#   4. stops the server (also on failure).
#
# Usage: scripts/test-kotlin-e2e.sh
# Env: CARGO_TARGET_DIR (default target), JAVA_OPTS (extra JVM flags),
#      KOTLIN_TEST_CLASSES (run only these), CI (a missing toolchain fails instead of
#      skipping), FERRY_INSTALL_TOOLCHAIN=1 (install it instead).
set -euo pipefail

SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPTS/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
die() { echo "test-kotlin-e2e: ERROR: $*" >&2; exit 1; }

# Toolchain first, so CI fails before spending minutes on cargo.
if ! "$SCRIPTS/kotlin-toolchain.sh" --check >/dev/null 2>&1; then
  if [[ "${FERRY_INSTALL_TOOLCHAIN:-0}" == 1 ]]; then
    "$SCRIPTS/kotlin-toolchain.sh" >/dev/null
  elif [[ -n "${CI:-}" ]]; then
    "$SCRIPTS/kotlin-toolchain.sh" --check >/dev/null || true
    die "Kotlin toolchain missing and CI is set: run scripts/kotlin-toolchain.sh first (refusing to skip)"
  else
    echo "test-kotlin-e2e: SKIP: Kotlin toolchain missing (run scripts/kotlin-toolchain.sh)" >&2
    exit 0
  fi
fi

echo "test-kotlin-e2e: cargo build -p ferry --lib; cargo build -p ferry-server" >&2
cargo build -p ferry --lib
cargo build -p ferry-server --bin ferry-server
SERVER_BIN="$TARGET_DIR/debug/ferry-server"
[[ -x "$SERVER_BIN" ]] || die "$SERVER_BIN not built"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/ferry-kotlin-e2e.XXXXXX")"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

"$SERVER_BIN" --listen 127.0.0.1:0 --database-url "sqlite:$tmp/server.db" \
  >"$tmp/server.out" 2>"$tmp/server.err" &
server_pid=$!

url=""
for _ in $(seq 1 300); do
  url="$(sed -nE 's/^ferry-server listening on (http[^ ]+)$/\1/p' "$tmp/server.out" | head -n1)"
  [[ -n "$url" ]] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/server.err" >&2; die "ferry-server exited"; }
  sleep 0.1
done
[[ -n "$url" ]] || { cat "$tmp/server.err" >&2; die "ferry-server did not report its address"; }
echo "test-kotlin-e2e: ferry-server at $url (pid $server_pid)" >&2

status=0
JAVA_OPTS="${JAVA_OPTS:-} -Dferry.server.url=$url" \
  "$SCRIPTS/test-kotlin.sh" bindings/kotlin/generated "$TARGET_DIR/debug" bindings/kotlin/tests || status=$?
if ((status)); then
  echo "test-kotlin-e2e: tests failed; last server log lines:" >&2
  tail -n 20 "$tmp/server.err" >&2 || true
fi
exit "$status"
