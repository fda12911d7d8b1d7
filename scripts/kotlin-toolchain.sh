#!/usr/bin/env bash
# Installs (idempotently) and locates the Kotlin-on-JVM test toolchain:
#   - kotlinc from the npm package `kotlin-compiler` (unpacked into .tools/, git-ignored)
#   - kotlinx-coroutines-core-jvm: the copy bundled in that tarball's lib/ (Debian's
#     libkotlinx-coroutines-java is 1.0.1, too old for uniffi's generated code)
#   - JNA and JUnit4 (+ hamcrest) from Debian: libjna-java, junit4
#   - a Java runtime (default-jre-headless) if `java` is missing
#
# Usage:
#   scripts/kotlin-toolchain.sh            # install if needed, print `export VAR=...` lines
#   eval "$(scripts/kotlin-toolchain.sh)"  # ... and load them into the current shell
#   scripts/kotlin-toolchain.sh --check    # install nothing; exit 1 if anything is missing
#
# Exported variables:
#   KOTLINC                 path to kotlinc
#   KOTLIN_HOME             unpacked kotlin-compiler package dir
#   FERRY_KOTLIN_COMPILE_CP classpath for kotlinc (JNA, JUnit4, hamcrest, coroutines)
#   FERRY_KOTLIN_RUNTIME_CP classpath for java (the above + kotlin-stdlib)
#
# Env overrides: KOTLIN_COMPILER_VERSION (npm version, default below), FERRY_TOOLS_DIR,
# JAVA_SHARE (default /usr/share/java).
set -euo pipefail

KOTLIN_COMPILER_VERSION="${KOTLIN_COMPILER_VERSION:-2.4.20}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${FERRY_TOOLS_DIR:-$ROOT/.tools}"
JAVA_SHARE="${JAVA_SHARE:-/usr/share/java}"
KOTLIN_HOME="$TOOLS_DIR/kotlin-compiler-$KOTLIN_COMPILER_VERSION"

check_only=0
case "${1:-}" in
  --check) check_only=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

log() { echo "kotlin-toolchain: $*" >&2; }

missing=()
jar_paths() {
  JNA_JAR="$JAVA_SHARE/jna.jar"
  JUNIT_JAR="$JAVA_SHARE/junit4.jar"
  HAMCREST_JAR="$JAVA_SHARE/hamcrest-core.jar"
  COROUTINES_JAR="$KOTLIN_HOME/lib/kotlinx-coroutines-core-jvm.jar"
  STDLIB_JAR="$KOTLIN_HOME/lib/kotlin-stdlib.jar"
  KOTLINC="$KOTLIN_HOME/bin/kotlinc"
}
find_missing() {
  jar_paths
  missing=()
  command -v java >/dev/null 2>&1 || missing+=("java")
  [[ -f "$JNA_JAR" ]] || missing+=("$JNA_JAR (apt: libjna-java)")
  [[ -f "$JUNIT_JAR" ]] || missing+=("$JUNIT_JAR (apt: junit4)")
  [[ -f "$HAMCREST_JAR" ]] || missing+=("$HAMCREST_JAR (apt: libhamcrest-java, via junit4)")
  [[ -x "$KOTLINC" ]] || missing+=("$KOTLINC (npm: kotlin-compiler@$KOTLIN_COMPILER_VERSION)")
  [[ -f "$COROUTINES_JAR" ]] || missing+=("$COROUTINES_JAR (bundled in kotlin-compiler)")
  return 0
}

apt_install() {
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { log "need root or sudo to apt-get install $*"; exit 1; }
    sudo=(sudo)
  fi
  log "apt-get install $*"
  if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "$@" >&2; then
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "$@" >&2
  fi
}

install() {
  jar_paths
  local pkgs=()
  command -v java >/dev/null 2>&1 || pkgs+=(default-jre-headless)
  [[ -f "$JNA_JAR" ]] || pkgs+=(libjna-java)
  [[ -f "$JUNIT_JAR" && -f "$HAMCREST_JAR" ]] || pkgs+=(junit4)
  if [[ ! -x "$KOTLINC" ]]; then
    command -v npm >/dev/null 2>&1 || pkgs+=(npm)
  fi
  command -v tar >/dev/null 2>&1 || pkgs+=(tar)
  if ((${#pkgs[@]})); then apt_install "${pkgs[@]}"; fi

  if [[ ! -x "$KOTLINC" ]]; then
    log "fetching kotlin-compiler@$KOTLIN_COMPILER_VERSION from npm into $KOTLIN_HOME"
    mkdir -p "$TOOLS_DIR"
    local tmp
    tmp="$(mktemp -d "$TOOLS_DIR/.kotlin-pack.XXXXXX")"
    (cd "$tmp" && npm pack --silent "kotlin-compiler@$KOTLIN_COMPILER_VERSION" >/dev/null)
    tar -xzf "$tmp"/kotlin-compiler-*.tgz -C "$tmp"
    chmod +x "$tmp"/package/bin/*
    rm -rf "$KOTLIN_HOME"
    mv "$tmp/package" "$KOTLIN_HOME"
    rm -rf "$tmp"
  fi
}

if ((check_only)); then
  find_missing
  if ((${#missing[@]})); then
    for m in "${missing[@]}"; do log "missing: $m"; done
    exit 1
  fi
else
  install
  find_missing
  if ((${#missing[@]})); then
    for m in "${missing[@]}"; do log "still missing after install: $m"; done
    exit 1
  fi
fi

COMPILE_CP="$JNA_JAR:$JUNIT_JAR:$HAMCREST_JAR:$COROUTINES_JAR"
RUNTIME_CP="$COMPILE_CP:$STDLIB_JAR"
coroutines_version="$(unzip -p "$COROUTINES_JAR" META-INF/kotlinx_coroutines_core.version 2>/dev/null || echo '?')"
deb_version() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo '?'; }
log "kotlinc $KOTLIN_COMPILER_VERSION, kotlinx-coroutines $coroutines_version (bundled), libjna-java $(deb_version libjna-java), junit4 $(deb_version junit4), $(java -version 2>&1 | head -n1)"

printf 'export KOTLIN_HOME=%q\n' "$KOTLIN_HOME"
printf 'export KOTLINC=%q\n' "$KOTLINC"
printf 'export FERRY_KOTLIN_COMPILE_CP=%q\n' "$COMPILE_CP"
printf 'export FERRY_KOTLIN_RUNTIME_CP=%q\n' "$RUNTIME_CP"
