#!/usr/bin/env bash
# Long runs of the sync property test (tests/sync_model.rs): devices making random
# offline edits through a faulty network, with kills, checked against a model;
# then of the fault-proxy test (tests/faults.rs: real HTTP through
# ferry-fault-proxy).
#
#   scripts/soak.sh [CASES] [ROUNDS]
#
# Then each fuzz target (fuzz/, the bodies in fuzz-harness) runs for
# FERRY_FUZZ_SECONDS (default 300) under libFuzzer, when a nightly toolchain
# and cargo-fuzz (cargo install cargo-fuzz) are there; otherwise it says so.
#
# Each round runs CASES cases (default 50,000) with fresh random seeds, in an
# optimised build; a failure stops the script, and proptest prints the smallest
# failing case and records its seed in tests/sync_model.proptest-regressions
# (commit it: every later run replays it first).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cases=${1:-50000}
rounds=${2:-1}
for round in $(seq 1 "$rounds"); do
  echo "soak: round $round of $rounds, $cases cases"
  FERRY_MODEL_CASES="$cases" cargo test --release --test sync_model -- --nocapture
done
echo "soak: $((cases * rounds)) cases passed"

# kill -9 of ferry-server mid-push, 200 times on SQLite (and on PostgreSQL when
# FERRY_TEST_PG_URL is set): server/tests/kill.rs.
echo "soak: ${FERRY_SERVER_KILLS:-200} server kills per backend"
FERRY_SERVER_KILLS="${FERRY_SERVER_KILLS:-200}" cargo test --release -p ferry-server --test kill -- --nocapture

# kill -9 of the app at each of the core's crash points (tests/crash_points.rs,
# 5 kills a run), FERRY_CRASH_RUNS times (default 40: 200 kills).
crash_runs=${FERRY_CRASH_RUNS:-40}
echo "soak: $crash_runs runs of the client crash points ($((crash_runs * 5)) kills)"
cargo test --release -p ferry --features crash-points --test crash_points --no-run
for run in $(seq 1 "$crash_runs"); do
  cargo test -q --release -p ferry --features crash-points --test crash_points >/dev/null ||
    { echo "soak: crash points failed on run $run" >&2; exit 1; }
done

# ferry CLI devices through the fault proxy with CLI and server kills
# (cli/tests/soak.rs), FERRY_CLI_SOAK_SEEDS seeds (default 50) of 10 rounds.
cli_seeds=${FERRY_CLI_SOAK_SEEDS:-50}
cli_first=$((RANDOM * 32768 + RANDOM))
echo "soak: $cli_seeds CLI soak seeds from $cli_first"
for s in $(seq "$cli_first" $((cli_first + cli_seeds - 1))); do
  FERRY_SOAK_SEED="$s" FERRY_SOAK_ROUNDS=10 cargo test -q -p ferry-cli --features crash-points --test soak >/dev/null ||
    { echo "soak: the CLI soak failed with FERRY_SOAK_SEED=$s" >&2; exit 1; }
done

# 1,000 clients at once on PostgreSQL (server/tests/load.rs), when
# FERRY_TEST_PG_URL is set.
if [ -n "${FERRY_TEST_PG_URL:-}" ]; then
  echo "soak: ${FERRY_LOAD_CLIENTS:-1000} clients at once on PostgreSQL"
  FERRY_LOAD_CLIENTS="${FERRY_LOAD_CLIENTS:-1000}" FERRY_LOAD_ROUNDS="${FERRY_LOAD_ROUNDS:-5}" \
    cargo test --release -p ferry-server --test load -- --nocapture
  # 1,000 real SyncClients on two instances, one killed.
  FERRY_LOAD_CLIENTS="${FERRY_SCALE_CLIENTS:-1000}" cargo test --release --test scale_out -- --nocapture
fi

# Devices of two users through the fault proxy (tests/faults.rs), from a random
# first seed; a failure names its seed: replay it with FERRY_FAULT_FIRST_SEED.
fault_seeds=${FERRY_FAULT_SEEDS:-200}
fault_rounds=${FERRY_FAULT_ROUNDS:-40}
first_seed=$((RANDOM * 32768 + RANDOM))
echo "soak: fault proxy, $fault_seeds seeds from $first_seed, $fault_rounds rounds each"
FERRY_FAULT_FIRST_SEED="$first_seed" FERRY_FAULT_SEEDS="$fault_seeds" FERRY_FAULT_ROUNDS="$fault_rounds" \
  cargo test --release --test faults -- --nocapture

fuzz_seconds=${FERRY_FUZZ_SECONDS:-300}
if rustup run nightly cargo --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1; then
  for target in $(cd fuzz && cargo +nightly fuzz list); do
    echo "soak: fuzz $target for ${fuzz_seconds}s"
    (cd fuzz && cargo +nightly fuzz run "$target" -- -max_total_time="$fuzz_seconds")
  done
else
  echo "soak: no nightly toolchain or no cargo-fuzz: the fuzz targets did not run (CI runs their bodies as property tests)"
fi
