#!/usr/bin/env bash
# From a fresh clone to a settled payment: the stack and an optimised build side by side, the
# six services, and one demo payment followed to its final state.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
GATEWAY="http://127.0.0.1:${SERVICE_PORT[gateway]}"
cd "$SAGAPAY_ROOT"

command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs)"
# The build (profile `quick`: release's checks, optimised at level 1; see Cargo.toml) runs
# while the stack is installed and started: on two cores they share the machine, and the
# build's longest part, librdkafka's C code, no longer waits for the stack.
mkdir -p "$LOCAL_DIR/logs"
build_log="$LOCAL_DIR/logs/build.log"
log "building the services (profile quick) while the stack comes up; log: $build_log"
CFLAGS="$QUICK_CFLAGS" cargo build --profile quick --locked -p sagapay >"$build_log" 2>&1 &
build=$!
"$SAGAPAY_ROOT/scripts/stack.sh" up
command -v curl >/dev/null || apt_install curl
wait "$build" || { tail -n 30 "$build_log"; die "the build failed (log: $build_log)"; }
log "built in $SECONDS s (with the stack)"
BUILD_PROFILE=quick "$SAGAPAY_ROOT/scripts/services.sh" start

API_KEY="${SAGAPAY_DEV_API_KEY:-dev-secret}"
KEY="demo-$(date +%s)-$RANDOM"
log "creating a demo payment (idempotency key $KEY)"
created="$(curl -fsS -X POST $GATEWAY/payments \
  -H 'content-type: application/json' -H "x-api-key: $API_KEY" \
  -d "{\"customer_id\":\"cust-demo\",\"amount_cents\":2500,\"currency\":\"USD\",\"idempotency_key\":\"$KEY\"}")" \
  || die "POST /payments failed"
echo "$created"
payment_id="$(printf '%s' "$created" | python3 -c 'import json,sys; print(json.load(sys.stdin)["payment_id"])')"

terminal() {
  curl -fsS -H "x-api-key: $API_KEY" "$GATEWAY/payments/$payment_id" \
    | python3 -c 'import json,sys; s=json.load(sys.stdin)["status"]; sys.exit(0 if s in ("SETTLED","FAILED","REVERSED") else 1)'
}
wait_until 30 "payment $payment_id" terminal \
  || warn "payment $payment_id is not terminal after 30 s (service logs: $LOCAL_DIR/logs/)"
log "payment $payment_id:"
read -r -d '' SHOW <<'PY' || true
import json, sys
p = json.load(sys.stdin)
print("  status: %s   amount: %s %s" % (p["status"], p["amount_cents"], p["currency"]))
print("  timeline:")
for t in p["timeline"]:
    print("    %s  %10s -> %-10s  %s" % (t["occurred_at"], t["from_state"] or "-", t["to_state"], t["reason"]))
PY
final="$(curl -fsS -H "x-api-key: $API_KEY" "$GATEWAY/payments/$payment_id")"
printf '%s' "$final" | python3 -c "$SHOW"
status="$(printf '%s' "$final" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')"
[ "$status" = "SETTLED" ] || die "the demo payment ended $status, not SETTLED"
cat <<EOT

Try one yourself:
  curl -X POST $GATEWAY/payments \\
    -H 'content-type: application/json' -H 'x-api-key: $API_KEY' \\
    -d '{"customer_id":"cust-1","amount_cents":2500,"currency":"USD","idempotency_key":"my-first-payment"}'
  curl -H 'x-api-key: $API_KEY' $GATEWAY/payments/<payment_id>

The operators' console, with this payment's timeline (log in as ops, password dev-ops-secret):
  http://127.0.0.1:${SERVICE_PORT[console]}/payments/$payment_id

Services: scripts/services.sh status    Logs: .local/logs/    Stop everything: scripts/down.sh
EOT
