#!/usr/bin/env bash
# A benchmark you can trust on a noisy machine: this tree against another git revision, in
# turns, on the running stack (scripts/stack.sh up).
#
#   scripts/bench.sh REV [--rounds 3] [--total 3000] [--concurrency 64]
#                        [--open-rate R --duration-s 30] [--skip-build]
#                        [--fairness [--a-rate 40] [--b-rate 10]]
#
# --fairness: two merchants at once, open loop for --duration-s: A sends payments whose
# cards time out (pm_card_timeout: retried, asked about, voided) at --a-rate, B good cards at
# --b-rate without retrying a refusal; a run records B's payments (how they ended: SETTLED
# or http_503 refused) and B's time to SETTLED. What one slow merchant costs another.
#
# Both are built in release into target directories of their own (.local/bench/, one per
# revision), REV from a git worktree; both are driven by this tree's load test (a closed
# loop retries 503 overloaded after its Retry-After, as a careful merchant does). Then, for each round and for each build in turn: a fresh namespace, the six
# services of that build, 200 warm-up payments, counters reset, the run (closed loop:
# --total at --concurrency; or open loop with --open-rate), then the services stopped and the
# namespace dropped. Per run it records settled/s, SETTLED p50/p99, API p99, the CPU each
# part of the stack spent per payment (/proc), PostgreSQL statements per payment
# (pg_stat_statements), Kafka messages per payment (the relays' outbox_published_total) and
# how the payments ended (SETTLED, http_503 refused, not_terminal, ...).
# It prints every run, then the medians per build; the JSON of every run goes to
# .local/bench/results-<time>.json.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SAGAPAY_ROOT"

rev=""
rounds=3
total=3000
concurrency=64
open_rate=""
duration_s=30
skip_build=0
fairness=0
a_rate=40
b_rate=10
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --total) total="$2"; shift 2 ;;
    --concurrency) concurrency="$2"; shift 2 ;;
    --open-rate) open_rate="$2"; shift 2 ;;
    --duration-s) duration_s="$2"; shift 2 ;;
    --skip-build) skip_build=1; shift ;;
    --fairness) fairness=1; shift ;;
    --a-rate) a_rate="$2"; shift 2 ;;
    --b-rate) b_rate="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) [ -z "$rev" ] || die "one revision only"; rev="$1"; shift ;;
  esac
done
[ -n "$rev" ] || die "usage: scripts/bench.sh REV [--rounds N] [--total N] [--concurrency N] [--open-rate R --duration-s S]"
sha="$(git rev-parse --short "$rev^{commit}")" || die "unknown revision $rev"

bench_dir="$LOCAL_DIR/bench"
mkdir -p "$bench_dir"
worktree="$bench_dir/rev-$sha"
# A target directory per revision, so --skip-build can never run another revision's binaries.
declare -A TARGET=([tree]="$bench_dir/tree-target" [rev]="$bench_dir/rev-$sha-target")
declare -A SOURCE=([tree]="$SAGAPAY_ROOT" [rev]="$worktree")
declare -A LABEL=([tree]="this tree ($(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo +changes))" [rev]="$rev ($sha)")

if [ "$skip_build" -eq 0 ]; then
  if [ ! -d "$worktree" ]; then
    git worktree add --detach "$worktree" "$sha" >/dev/null
  else
    git -C "$worktree" checkout --detach -q "$sha"
  fi
  for b in rev tree; do
    log "building ${LABEL[$b]} into ${TARGET[$b]}"
    (cd "${SOURCE[$b]}" && CARGO_TARGET_DIR="${TARGET[$b]}" cargo build --release --locked --bins -q)
  done
fi

for b in rev tree; do
  [ -x "${TARGET[$b]}/release/sagapay" ] || [ -x "${TARGET[$b]}/release/sagapay-gateway" ] \
    || die "no release build in ${TARGET[$b]}: run without --skip-build"
done
# One load generator for both builds (this tree's), so they are measured alike. In a closed
# loop it retries a 503 overloaded after its Retry-After, as a careful merchant does: the
# run measures what the stack settles behind its admission control, not what it refuses.
loadtest="${TARGET[tree]}/release/sagapay-loadtest"

# On the secure Kafka when that is the one running (scripts/stack.sh up --secure: cluster.env
# gives each service its own user, {service}); the load test (it follows the payments stream)
# runs and namespaces are dropped as its administrator.
stack_args=()
secure=0
if [[ "${SAGAPAY_KAFKA_CLIENT_CONFIG:-}" == *"{service}"* ]]; then stack_args=(--secure); secure=1; fi
# The services over HTTPS (the secure stack's): the load test and curl trust their CA.
scheme=http
curl_tls=()
loadtest_tls=()
if [ -n "${SAGAPAY_TLS_CERT_FILE:-}" ]; then
  scheme=https
  curl_tls=(--cacert "$SAGAPAY_SERVICE_CA_FILE")
  loadtest_tls=(--base-url "https://127.0.0.1:${SERVICE_PORT[gateway]}")
fi
as_admin() {
  if [ "$secure" = 1 ]; then
    SAGAPAY_KAFKA_CLIENT_CONFIG="${SAGAPAY_KAFKA_CLIENT_CONFIG//\{service\}/admin}" \
      SAGAPAY_KAFKA_SASL_PASSWORD_FILE="${SAGAPAY_KAFKA_SASL_PASSWORD_FILE//\{service\}/admin}" "$@"
  else "$@"; fi
}
"$SAGAPAY_ROOT/scripts/stack.sh" up "${stack_args[@]}" >/dev/null
psql_q() { PGPASSWORD="$PG_PASSWORD" psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -Atq -c "$1"; }
psql_q "SELECT count(*) FROM pg_stat_statements" >/dev/null \
  || die "pg_stat_statements is not available: scripts/stack.sh up installs it (infra/postgres/sagapay.conf)"

# Kafka messages produced so far by the services of the running namespace.
published() {
  local sum=0 svc v
  for svc in "${SERVICES[@]}"; do
    v="$(curl -fsS -m 5 "${curl_tls[@]}" "$scheme://127.0.0.1:${SERVICE_PORT[$svc]}/metrics" \
      | awk '$1 ~ /^outbox_published_total/ {s += $2} END {print s + 0}')"
    sum=$((sum + ${v%.*}))
  done
  echo "$sum"
}

# A fairness run (--fairness): merchants A and B of namespace $2 made with build $1's
# sagapayctl; A's slow payments and B's good ones at once; B's summary into $3.
fairness_run() {
  local target="$1" ns="$2" summary="$3" key_a key_b a_pid
  new_key() {
    "$target/release/sagapayctl" --namespace "$ns" merchant create "$1" --json \
      | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"]["secret"])'
  }
  key_a="$(new_key "Slow Cards Ltd")"
  key_b="$(new_key "Good Cards Ltd")"
  as_admin "$loadtest" "${loadtest_tls[@]}" --no-progress --no-reconcile --api-key "$key_a" --scenario timeout \
    --rate "$a_rate" --duration-s "$duration_s" --timeout-ms 120000 >/dev/null 2>&1 &
  a_pid=$!
  as_admin "$loadtest" "${loadtest_tls[@]}" --no-progress --no-reconcile --api-key "$key_b" \
    --rate "$b_rate" --duration-s "$duration_s" --json "$summary" >/dev/null
  kill "$a_pid" 2>/dev/null || true
  wait "$a_pid" 2>/dev/null || true
}

results="$bench_dir/results-$(date +%Y%m%d-%H%M%S).jsonl"
: >"$results"
export SAGAPAY_RATE_LIMIT_PER_SECOND=1000000 SAGAPAY_RATE_LIMIT_BURST=1000000
# A run that fails (the load test, a service) leaves no services behind for the next one.
trap '"$SAGAPAY_ROOT/scripts/services.sh" stop >/dev/null 2>&1 || true' EXIT
for round in $(seq 1 "$rounds"); do
  for b in rev tree; do
    target="${TARGET[$b]}"
    ns="bench_${b}_${round}_$(date +%s)"
    export SAGAPAY_NAMESPACE="$ns"
    log "round $round/$rounds: ${LABEL[$b]} in namespace $ns"
    # One merchant's closed loop measures the pipeline, not a merchant's share of it: a
    # build that has shares (a setting the other refuses) gives the merchant no share of
    # its own, except in a fairness run, which is about shares.
    if [ "$fairness" -eq 0 ] && grep -q SAGAPAY_ADMISSION_MERCHANT_MAX_IN_FLIGHT \
        "${SOURCE[$b]}/libs/service-kit/src/settings.rs"; then
      export SAGAPAY_ADMISSION_MERCHANT_MAX_IN_FLIGHT=0
    else
      unset SAGAPAY_ADMISSION_MERCHANT_MAX_IN_FLIGHT
    fi
    CARGO_TARGET_DIR="$target" "$SAGAPAY_ROOT/scripts/services.sh" start >/dev/null
    as_admin "$loadtest" "${loadtest_tls[@]}" --no-progress --no-reconcile --total 200 --concurrency 16 >/dev/null
    psql_q "SELECT pg_stat_statements_reset()" >/dev/null
    sent_before="$(published)"
    cpu_before="$(mktemp)"; cpu_after="$(mktemp)"; summary="$(mktemp)"
    cpu_snapshot >"$cpu_before"
    if [ -n "$open_rate" ]; then
      load=(--rate "$open_rate" --duration-s "$duration_s")
    else
      load=(--total "$total" --concurrency "$concurrency" --retry-overloaded)
    fi
    if [ "$fairness" -eq 1 ]; then
      fairness_run "$target" "$ns" "$summary"
    else
      as_admin "$loadtest" "${loadtest_tls[@]}" --no-progress --no-reconcile "${load[@]}" --json "$summary" >/dev/null
    fi
    cpu_snapshot >"$cpu_after"
    sent_after="$(published)"
    statements="$(psql_q "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s
                          JOIN pg_database d ON d.oid = s.dbid WHERE d.datname LIKE '${ns}\_%'")"
    CARGO_TARGET_DIR="$target" "$SAGAPAY_ROOT/scripts/services.sh" stop >/dev/null
    as_admin "$target/release/sagapayctl" --namespace "$ns" namespace drop --yes >/dev/null 2>&1 || true
    python3 - "$b" "$round" "$summary" "$cpu_before" "$cpu_after" "$statements" \
      "$((sent_after - sent_before))" "$(getconf CLK_TCK)" >>"$results" <<'PY'
import json, sys
build, rnd, summary, before, after, statements, messages, hz = sys.argv[1:]
s = json.load(open(summary))
read = lambda f: {l.split()[0]: int(l.split()[1]) for l in open(f) if l.strip()}
b, a = read(before), read(after)
n = max(s["payments"], 1)
cpu = {k: (a[k] - b.get(k, 0)) * 1000 / int(hz) / n for k in a}
print(json.dumps({
    "build": build, "round": int(rnd), "payments": s["payments"], "errors": s["errors"],
    "settled_per_s": s["throughput_per_s"],
    "settled_p50_ms": s["time_to_settled"]["p50_ms"], "settled_p99_ms": s["time_to_settled"]["p99_ms"],
    "api_p99_ms": s["api_latency"]["p99_ms"],
    "cpu_ms_per_payment": dict(sorted(cpu.items())), "cpu_ms_total": sum(cpu.values()),
    "statements_per_payment": int(statements) / n, "kafka_messages_per_payment": int(messages) / n,
    "by_status": s["by_status"],
}))
PY
    rm -f "$cpu_before" "$cpu_after" "$summary"
    tail -n 1 "$results" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print("  {build:<4} round {round}: {settled_per_s:.1f} settled/s, SETTLED p50 {settled_p50_ms:.0f} ms"
      " p99 {settled_p99_ms:.0f} ms, API p99 {api_p99_ms:.1f} ms, CPU {cpu_ms_total:.1f} ms/payment,"
      " {statements_per_payment:.1f} statements and {kafka_messages_per_payment:.1f} Kafka messages"
      " per payment; {by_status}".format(**r))' >&2
  done
done

python3 - "$results" "${LABEL[rev]}" "${LABEL[tree]}" <<'PY'
import json, statistics, sys
path, rev_label, tree_label = sys.argv[1:]
runs = [json.loads(l) for l in open(path)]
med = lambda xs: statistics.median(xs) if xs else float("nan")
print(f"medians over {len(runs) // 2} round(s) each (every run: {path})")
rows = [("settled/s", "settled_per_s", "{:.1f}"), ("SETTLED p50 ms", "settled_p50_ms", "{:.0f}"),
        ("SETTLED p99 ms", "settled_p99_ms", "{:.0f}"), ("API p99 ms", "api_p99_ms", "{:.1f}"),
        ("CPU ms/payment", "cpu_ms_total", "{:.1f}"), ("statements/payment", "statements_per_payment", "{:.1f}"),
        ("Kafka messages/payment", "kafka_messages_per_payment", "{:.1f}")]
print(f"{'':<24} {rev_label:>28} {tree_label:>28}")
for name, key, fmt in rows:
    vals = [fmt.format(med([r[key] for r in runs if r["build"] == b])) for b in ("rev", "tree")]
    print(f"{name:<24} {vals[0]:>28} {vals[1]:>28}")
parts = sorted({k for r in runs for k in r["cpu_ms_per_payment"]})
for p in parts:
    vals = ["{:.2f}".format(med([r["cpu_ms_per_payment"].get(p, 0) for r in runs if r["build"] == b])) for b in ("rev", "tree")]
    print(f"  CPU {p:<18} {vals[0]:>28} {vals[1]:>28}")
PY
