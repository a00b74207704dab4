#!/usr/bin/env bash
# Runs the load test against the services already started (scripts/services.sh start) and
# prints the CPU each part of the stack spent per payment during the run, from /proc
# (utime + stime of every process before and after; processes that start or stop during the
# run, such as the load test itself, are not counted).
#   scripts/cpu-per-payment.sh --rate 60 --duration-s 30
# Warm up first (a short run): right after start, the JVM compiling Kafka and idle polling
# make the per-payment figures of a short, slow run several times too high.
# Arguments go to sagapay-loadtest (add --no-reconcile to leave out the reconciliation).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SAGAPAY_ROOT"
bin="$CARGO_TARGET_DIR/release/sagapay-loadtest"
[ -x "$bin" ] || die "$bin is missing: run 'cargo build --release' first"

before="$(mktemp)"; after="$(mktemp)"; out="$(mktemp)"
trap 'rm -f "$before" "$after" "$out"' EXIT
cpu_snapshot >"$before"
"$bin" --no-progress "$@" | tee "$out"
cpu_snapshot >"$after"
payments="$(awk '/^payments/ {print $2; exit}' "$out")"
[ -n "$payments" ] && [ "$payments" -gt 0 ] || die "the load test reported no payments"
hz="$(getconf CLK_TCK)"
echo "CPU per payment (ms), $payments payments:"
join "$before" "$after" | awk -v n="$payments" -v hz="$hz" '{
    ms = ($3 - $2) * 1000 / hz / n; total += ms
    printf "  %-20s %7.2f\n", $1, ms
  } END { printf "  %-20s %7.2f\n", "total", total }'
