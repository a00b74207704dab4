#!/usr/bin/env bash
# A soak of the fault mix: load at a steady rate while a random service is SIGKILLed every
# 5 s, the broker is SIGKILLed and restarted once and PostgreSQL restarted once, on a Kafka
# and a PostgreSQL of the run's own; then every payment must have ended exactly once, the books
# agree, and time to terminal p99 and the longest consumer gap stay within 10 s. The same test
# runs for 60 s in the suite (tests/e2e/tests/chaos.rs), where the target counts from the end of
# each outage (a restart's own length is not the system's); the soak holds the absolute numbers
# too, from each payment's creation and with the outages in the gaps (CHAOS_ABSOLUTE_TARGET=1).
#
#   scripts/chaos.sh [--duration-s N] [--rate R] [--seed S]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SAGAPAY_ROOT"

duration=300
rate=10
seed=""
while [ $# -gt 0 ]; do
  case "$1" in
    --duration-s) duration="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    *) die "usage: $0 [--duration-s N] [--rate R] [--seed S]" ;;
  esac
done

# The Kafka jars and PostgreSQL's binaries the run's own servers are made from.
"$SAGAPAY_ROOT/scripts/stack.sh" up
cargo build --release --locked --bins -q
export CHAOS_DURATION_S="$duration" CHAOS_RATE="$rate" CHAOS_ABSOLUTE_TARGET=1
[ -n "$seed" ] && export CHAOS_SEED="$seed"
log "fault mix for $duration s at $rate payments/s"
exec cargo test --release --locked -q -p sagapay-e2e --test chaos \
  faults_under_load_lose_nothing_and_duplicate_nothing -- --exact --nocapture
