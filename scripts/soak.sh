#!/usr/bin/env bash
# Long runs of the sync property test (tests/sync_model.rs): devices making random
# offline edits through a faulty network, with kills, checked against a model.
#
#   scripts/soak.sh [CASES] [ROUNDS]
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
