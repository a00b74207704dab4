#!/usr/bin/env bash
# Starts or stops the six SagaPay services and the operators' console in the background, from the build of profile
# BUILD_PROFILE (scripts/up.sh builds `quick`), or by default the newer of the
# `release` and `quick` builds.
#   scripts/services.sh start [--instances N] | stop | status
# With --instances N (default 1), N instances of every service run side by side: instance i
# listens on the service's port + 10 × (i - 1) (gateway 8000, 8010, ...), has the id i
# (SAGAPAY_INSTANCE_ID: Kafka static group membership, so a restarted instance takes its
# partitions back at once; the service_instance label of its metrics and logs), and gateway i
# calls orchestrator i.
# Logs: .local/logs/<service>[.<i>].log   PIDs: .local/run/<service>.<i>.pid
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUN_DIR="$LOCAL_DIR/run"
LOG_DIR="$LOCAL_DIR/logs"
newest_build() {
  local release="$CARGO_TARGET_DIR/release/sagapay" quick="$CARGO_TARGET_DIR/quick/sagapay"
  if [ -x "$quick" ] && { [ ! -e "$release" ] || [ "$quick" -nt "$release" ]; }; then
    echo quick
  else
    echo release
  fi
}
BIN_DIR="$CARGO_TARGET_DIR/${BUILD_PROFILE:-$(newest_build)}"

port_of() { echo $((SERVICE_PORT[$1] + 10 * ($2 - 1))); }

pid_of() {
  local pid; pid="$(cat "$RUN_DIR/$1.$2.pid" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

# HTTPS when the services are given a certificate (the secure stack's cluster.env gives one).
SCHEME=http
CURL_TLS=()
if [ -n "${SAGAPAY_TLS_CERT_FILE:-}" ]; then
  SCHEME=https
  CURL_TLS=(--cacert "${SAGAPAY_SERVICE_CA_FILE:?SAGAPAY_SERVICE_CA_FILE names the CA of SAGAPAY_TLS_CERT_FILE}")
fi
url_of() { echo "$SCHEME://127.0.0.1:$(port_of "$1" "$2")"; }
ready() { curl -fsS -m 2 "${CURL_TLS[@]}" "$(url_of "$1" "$2")/ready" >/dev/null 2>&1; }

# The instances this checkout started (from the pid files), 1 when none.
running_instances() {
  local n=1 f i
  for f in "$RUN_DIR"/*.pid; do
    [ -e "$f" ] || continue
    i="${f%.pid}"; i="${i##*.}"
    case "$i" in ''|*[!0-9]*) continue ;; esac
    [ "$i" -gt "$n" ] && n="$i"
  done
  echo "$n"
}

# On the secure Kafka (scripts/stack.sh up --secure) each service connects as itself
# ({service} in the settings), and the namespace's ACLs are applied first, as its
# administrator (sagapayctl kafka acls --apply: idempotent).
secure_kafka() { [[ "${SAGAPAY_KAFKA_CLIENT_CONFIG:-}" == *"{service}"* ]]; }
as_user() {
  SAGAPAY_KAFKA_CLIENT_CONFIG="${SAGAPAY_KAFKA_CLIENT_CONFIG//\{service\}/$1}" \
    SAGAPAY_KAFKA_SASL_PASSWORD_FILE="${SAGAPAY_KAFKA_SASL_PASSWORD_FILE//\{service\}/$1}" "${@:2}"
}

start() {
  local instances="$1" svc i port log
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  if secure_kafka; then
    [ -x "$BIN_DIR/sagapayctl" ] || die "$BIN_DIR/sagapayctl is missing: build it to apply the Kafka ACLs"
    as_user admin "$BIN_DIR/sagapayctl" kafka acls --apply >/dev/null \
      || die "could not apply the Kafka ACLs (sagapayctl kafka acls --apply, as admin)"
  fi
  for i in $(seq 1 "$instances"); do
    for svc in "${SERVICES[@]}"; do
      if [ -n "$(pid_of "$svc" "$i")" ]; then
        log "$svc/$i already running (pid $(pid_of "$svc" "$i"))"
        continue
      fi
      # One binary for the six (`sagapay <service>`); a build from before it (scripts/bench.sh
      # runs older revisions too) has one binary per service.
      local bin=("$BIN_DIR/sagapay" "$svc")
      [ -x "${bin[0]}" ] || bin=("$BIN_DIR/sagapay-$svc")
      [ -x "${bin[0]}" ] || die "$BIN_DIR/sagapay is missing: run scripts/up.sh (or cargo build --release) first"
      port="$(port_of "$svc" "$i")"
      if port_open "$port"; then
        die "port $port ($svc/$i) is taken by another process"
      fi
      if [ "$instances" -gt 1 ]; then log="$LOG_DIR/$svc.$i.log"; else log="$LOG_DIR/$svc.log"; fi
      (
        export SAGAPAY_HTTP_ADDR="127.0.0.1:$port"
        export SAGAPAY_ORCHESTRATOR_URL="$(url_of orchestrator "$i")"
        export SAGAPAY_NOTIFICATION_URL="$(url_of notification "$i")"
        # The console watches and calls every service (of its own instance number).
        export SAGAPAY_GATEWAY_URL="$(url_of gateway "$i")"
        export SAGAPAY_RISK_URL="$(url_of risk "$i")"
        export SAGAPAY_PROVIDER_ADAPTER_URL="$(url_of provider-adapter "$i")"
        export SAGAPAY_LEDGER_URL="$(url_of ledger "$i")"
        export SAGAPAY_INSTANCE_ID="$i"
        if secure_kafka; then
          # The console reads and replays dead letters: it is the operators' Kafka user.
          local user="$svc"
          [ "$svc" = console ] && user=sagapayctl
          export SAGAPAY_KAFKA_CLIENT_CONFIG="${SAGAPAY_KAFKA_CLIENT_CONFIG//\{service\}/$user}"
          export SAGAPAY_KAFKA_SASL_PASSWORD_FILE="${SAGAPAY_KAFKA_SASL_PASSWORD_FILE//\{service\}/$user}"
        fi
        nohup "${bin[@]}" >>"$log" 2>&1 &
        echo $! > "$RUN_DIR/$svc.$i.pid"
      )
    done
  done
  for i in $(seq 1 "$instances"); do
    for svc in "${SERVICES[@]}"; do
      if ! wait_until 90 "$svc/$i" ready "$svc" "$i"; then
        tail -n 20 "$LOG_DIR/$svc"*.log >&2 || true
        die "$svc/$i is not ready on port $(port_of "$svc" "$i") after 90 s (logs in $LOG_DIR)"
      fi
      log "$svc/$i ready on $(url_of "$svc" "$i")"
    done
  done
}

stop() {
  local f pid deadline
  for f in "$RUN_DIR"/*.pid; do
    [ -e "$f" ] || continue
    pid="$(cat "$f" 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      log "stopping $(basename "$f" .pid) (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for f in "$RUN_DIR"/*.pid; do
    [ -e "$f" ] || continue
    pid="$(cat "$f" 2>/dev/null || true)"
    deadline=$((SECONDS + 20))
    while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
  done
}

status() {
  local i svc state
  for i in $(seq 1 "$(running_instances)"); do
    for svc in "${SERVICES[@]}"; do
      if ready "$svc" "$i"; then state=ready
      elif [ -n "$(pid_of "$svc" "$i")" ]; then state=starting
      else state=down; fi
      printf '%-17s %-3s %-9s %s\n' "$svc" "$i" "$state" "$(url_of "$svc" "$i")"
    done
  done
}

instances=1
case "${1:-}" in
  start)
    shift
    while [ $# -gt 0 ]; do
      case "$1" in
        --instances) instances="$2"; shift 2 ;;
        *) die "unknown option $1" ;;
      esac
    done
    case "$instances" in ''|*[!0-9]*|0) die "--instances needs a number from 1" ;; esac
    start "$instances" ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start [--instances N]|stop|status" >&2; exit 2 ;;
esac
