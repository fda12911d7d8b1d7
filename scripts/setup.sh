#!/usr/bin/env bash
# Installs what every test lane needs, idempotently. scripts/test.sh runs it first;
# run it alone to set up a fresh Debian machine:
#
#   1. Debian packages (apt-get, through sudo when not root): PostgreSQL 15, a JRE,
#      JNA, JUnit4, gcc and the libc headers, npm
#   2. the Kotlin compiler into .tools/ (scripts/kotlin-toolchain.sh)
#   3. the rustup components rustfmt and clippy
#   4. npm packages: `npm ci` in each package folder listed in NPM_DIRS that exists
#
# Prints what it found and what it installed. When something cannot be installed (not
# root and no sudo, no network, not Debian) it prints a loud message and exits 1:
# outside CI scripts/test.sh goes on and the lanes that need it skip; under CI (env CI
# set) scripts/test.sh stops there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "setup: $*"; }
failed=()
fail() { echo "setup: FAILED: $*" >&2; failed+=("$*"); }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else return 1
  fi
}
can_root() { [ "$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1; }

# ---- 1. Debian packages ----------------------------------------------------------
# apt_need PACKAGE [COMMAND]: install PACKAGE unless `dpkg -s` says it is installed, or
# COMMAND is already on PATH from elsewhere (a JDK from another package; NodeSource's
# nodejs ships npm, and Debian's npm would conflict with it). Not `grep -q`: under
# pipefail, dpkg killed by SIGPIPE would count as "not installed".
apt_missing=()
apt_need() {
  if [ -n "${2:-}" ] && command -v "$2" >/dev/null 2>&1; then
    say "have $2 ($(command -v "$2"))"
  elif command -v dpkg >/dev/null 2>&1 &&
    dpkg -s "$1" 2>/dev/null | grep '^Status: install ok installed' >/dev/null; then
    say "have $1 $(dpkg-query -W -f '${Version}' "$1")"
  else
    apt_missing+=("$1")
  fi
}
apt_need postgresql-15             # server storage suite, end-to-end sync on PostgreSQL
apt_need default-jre-headless java # Kotlin bindings on the JVM
apt_need libjna-java               #   JNA (jna.jar)
apt_need junit4                    #   JUnit4 + hamcrest
apt_need gcc                       # Rust's linker, bundled SQLite, Swift C header check
apt_need libc6-dev                 #   the C headers
apt_need g++                       # the React Native JSI C++ syntax check
apt_need libssl-dev                # OpenSSL's libcrypto, for SQLCipher (feature sqlcipher)
apt_need npm npm                   # fetches the Kotlin compiler; npm packages (4.)
apt_need ca-certificates           # HTTPS for npm and rustup
apt_need sqlite3 sqlite3           # a Node test damages a database file behind the core

if ((${#apt_missing[@]})); then
  if ! command -v apt-get >/dev/null 2>&1; then
    fail "not a Debian machine (no apt-get): install ${apt_missing[*]} yourself"
  elif ! can_root; then
    fail "not root and no sudo: cannot apt-get install ${apt_missing[*]}"
  else
    say "apt-get install ${apt_missing[*]}"
    if as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null; then
      say "installed ${apt_missing[*]}"
    else
      fail "apt-get install ${apt_missing[*]} (no network? see apt's messages above)"
    fi
  fi
fi

# ---- 2. Kotlin compiler (.tools/) ------------------------------------------------
if found=$(scripts/kotlin-toolchain.sh --check 2>&1 >/dev/null); then
  say "have ${found#kotlin-toolchain: }"
else
  say "installing the Kotlin toolchain (scripts/kotlin-toolchain.sh)"
  scripts/kotlin-toolchain.sh >/dev/null || fail "the Kotlin toolchain (scripts/kotlin-toolchain.sh)"
fi

# ---- 3. Rust components --------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
  fail "Rust is not installed (https://rustup.rs)"
elif cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1; then
  say "have $(cargo fmt --version), $(cargo clippy --version)"
elif command -v rustup >/dev/null 2>&1; then
  say "rustup component add rustfmt clippy"
  rustup component add rustfmt clippy || fail "rustup component add rustfmt clippy"
else
  fail "rustfmt/clippy are missing and there is no rustup to add them"
fi

# ---- 4. npm packages -----------------------------------------------------------
# A lane that needs npm packages adds its package folder (with a package-lock.json)
# here. Folders that do not exist yet are passed over.
NPM_DIRS=(
  bindings/react-native
)
npm_ci() {
  local dir=$1
  [ -d "$dir" ] || return 0
  if [ ! -f "$dir/package-lock.json" ]; then
    fail "$dir has no package-lock.json for npm ci"
  elif ! command -v npm >/dev/null 2>&1; then
    fail "npm is missing: cannot npm ci in $dir"
  elif [ "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]; then
    say "have npm packages in $dir"
  else
    say "npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund) || fail "npm ci in $dir"
  fi
}
for dir in "${NPM_DIRS[@]}"; do npm_ci "$dir"; done

# ---- summary -------------------------------------------------------------------
if ((${#failed[@]})); then
  {
    echo
    echo "!!!! SETUP INCOMPLETE (scripts/setup.sh) !!!!"
    for f in "${failed[@]}"; do echo "!!!!   $f"; done
    if [ -n "${CI:-}" ]; then
      echo "!!!! required under CI !!!!"
    else
      echo "!!!! the test lanes that need these will skip !!!!"
    fi
    echo
  } >&2
  exit 1
fi
say "everything the test lanes need is installed"
