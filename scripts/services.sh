#!/usr/bin/env bash
# Starts or stops the six SagaPay services from the release build, in the background.
#   scripts/services.sh start | stop | status
# Logs: .local/logs/<service>.log   PIDs: .local/run/<service>.pid
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUN_DIR="$LOCAL_DIR/run"
LOG_DIR="$LOCAL_DIR/logs"
BIN_DIR="$CARGO_TARGET_DIR/release"

svc_pid() {
  local pid; pid="$(cat "$RUN_DIR/$1.pid" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

ready() { curl -fsS -m 2 "http://127.0.0.1:${SERVICE_PORT[$1]}/ready" >/dev/null 2>&1; }

start() {
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  for svc in "${SERVICES[@]}"; do
    if [ -n "$(svc_pid "$svc")" ]; then
      log "$svc already running (pid $(svc_pid "$svc"))"
      continue
    fi
    local bin="$BIN_DIR/sagapay-$svc"
    [ -x "$bin" ] || die "$bin is missing: run 'cargo build --release' first"
    if port_open "${SERVICE_PORT[$svc]}"; then
      die "port ${SERVICE_PORT[$svc]} ($svc) is taken by another process"
    fi
    SAGAPAY_HTTP_ADDR="127.0.0.1:${SERVICE_PORT[$svc]}" nohup "$bin" >>"$LOG_DIR/$svc.log" 2>&1 &
    echo $! > "$RUN_DIR/$svc.pid"
  done
  for svc in "${SERVICES[@]}"; do
    if ! wait_until 90 "$svc" ready "$svc"; then
      tail -n 20 "$LOG_DIR/$svc.log" >&2 || true
      die "$svc is not ready on port ${SERVICE_PORT[$svc]} after 90 s (log above: $LOG_DIR/$svc.log)"
    fi
    log "$svc ready on http://127.0.0.1:${SERVICE_PORT[$svc]}"
  done
}

stop() {
  for svc in "${SERVICES[@]}"; do
    local pid; pid="$(svc_pid "$svc")"
    [ -n "$pid" ] || continue
    log "stopping $svc (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
  done
  for svc in "${SERVICES[@]}"; do
    local pid; pid="$(svc_pid "$svc")"
    [ -n "$pid" ] || continue
    local deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$RUN_DIR/$svc.pid"
  done
}

status() {
  for svc in "${SERVICES[@]}"; do
    if ready "$svc"; then state=ready; elif [ -n "$(svc_pid "$svc")" ]; then state=starting; else state=down; fi
    printf '%-17s %-9s http://127.0.0.1:%s\n' "$svc" "$state" "${SERVICE_PORT[$svc]}"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
