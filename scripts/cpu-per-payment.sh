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

# CPU ticks per part of the stack: the services by name, PostgreSQL, Kafka (the JVM), Redis.
snapshot() {
  local p comm fields
  for p in /proc/[0-9]*; do
    comm="$(tr -d '\0' <"$p/comm" 2>/dev/null)" || continue
    fields="$(sed 's/.*) //' "$p/stat" 2>/dev/null)" || continue
    set -- $fields
    echo "$comm $(( ${12} + ${13} ))"
  done | awk '{
      n = $1
      if (n ~ /^sagapay-loadtes/) next
      else if (n ~ /^sagapay-/) g = n
      else if (n == "postgres") g = "postgresql"
      else if (n == "java") g = "kafka"
      else if (n ~ /^redis/) g = "redis"
      else next
      t[g] += $2
    } END { for (g in t) print g, t[g] }' | sort
}

before="$(mktemp)"; after="$(mktemp)"; out="$(mktemp)"
trap 'rm -f "$before" "$after" "$out"' EXIT
snapshot >"$before"
"$bin" --no-progress "$@" | tee "$out"
snapshot >"$after"
payments="$(awk '/^payments/ {print $2; exit}' "$out")"
[ -n "$payments" ] && [ "$payments" -gt 0 ] || die "the load test reported no payments"
hz="$(getconf CLK_TCK)"
echo "CPU per payment (ms), $payments payments:"
join "$before" "$after" | awk -v n="$payments" -v hz="$hz" '{
    ms = ($3 - $2) * 1000 / hz / n; total += ms
    printf "  %-20s %7.2f\n", $1, ms
  } END { printf "  %-20s %7.2f\n", "total", total }'
