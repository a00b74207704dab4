#!/usr/bin/env bash
# The deterministic simulation of the saga (services/orchestrator/src/simulation): the real
# decision code and the adapter's real retry policy against models of the other services,
# under injected faults, with every invariant checked after every step. No stack needed.
#
#   scripts/simulate.sh --seed S            replays seed S exactly (prints its trace if it fails)
#   scripts/simulate.sh --seeds N [--first F] runs N seeds from F (default 1)
#
# The test suite runs 2,000 seeds on every run; this is for longer explorations and replays.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SAGAPAY_ROOT"

unset SIM_SEED SIM_SEEDS SIM_FIRST
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) export SIM_SEED="$2"; shift 2 ;;
    --seeds) export SIM_SEEDS="$2"; shift 2 ;;
    --first) export SIM_FIRST="$2"; shift 2 ;;
    *) die "usage: $0 [--seed S | --seeds N [--first F]]" ;;
  esac
done
[ -n "${SIM_SEED:-}${SIM_SEEDS:-}" ] || die "usage: $0 [--seed S | --seeds N [--first F]]"

# Optimised: long explorations are many seeds.
cargo test --release --locked -p sagapay-orchestrator --lib \
  simulation::tests::every_seed_keeps_every_invariant -- --exact --nocapture
