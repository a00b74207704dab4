#!/usr/bin/env bash
# The whole test suite against the real stack: PostgreSQL, Redis and Kafka are installed and
# started when needed, then every test of the workspace runs. CI runs exactly this.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SAGAPAY_ROOT"

"$SAGAPAY_ROOT/scripts/stack.sh" up
command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs)"

# Databases of test namespaces from earlier, interrupted runs (tests drop their own).
# Users a failed production-mode test left (their databases go below, then they do).
prod_roles=$(PGPASSWORD="$PG_PASSWORD" psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -Atq \
  -c "SELECT rolname FROM pg_roles WHERE rolname ~ '^t_[0-9a-f]{12}_prod$'")
for role in $prod_roles; do
  PGPASSWORD="$PG_PASSWORD" psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -q \
    -c "GRANT \"$role\" TO \"$PG_USER\"" >/dev/null 2>&1 || true
done
PGPASSWORD="$PG_PASSWORD" psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -Atq \
  -c "SELECT datname FROM pg_database WHERE datname ~ '^t_[0-9a-f]{12}_'" \
  | while read -r db; do
      PGPASSWORD="$PG_PASSWORD" psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -q \
        -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true
    done
for role in $prod_roles; do
  PGPASSWORD="$PG_PASSWORD" psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -q \
    -c "DROP ROLE IF EXISTS \"$role\"" >/dev/null 2>&1 || true
done

# The end-to-end tests mostly wait on timers (retry back-off) and I/O; four at a time keeps
# two cores busy without starving them.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
# Services started in-process by the tests log to stdout; keep CI output to what matters.
export RUST_LOG="${RUST_LOG:-warn}"
# While the suite runs, every default service port is taken: by the README's services when
# they run (scripts/up.sh), by a sentinel answering 418 otherwise. So no test can pass only
# because a default port is free, or only because something answers there.
free_defaults=()
for svc in "${SERVICES[@]}"; do
  port_open "${SERVICE_PORT[$svc]}" || free_defaults+=("${SERVICE_PORT[$svc]}")
done
if [ "${#free_defaults[@]}" -gt 0 ]; then
  python3 "$SAGAPAY_ROOT/scripts/port-sentinel.py" "${free_defaults[@]}" &
  sentinel=$!
  trap 'kill "$sentinel" 2>/dev/null || true' EXIT
  wait_until 10 "port sentinel" port_open "${free_defaults[0]}" || die "the port sentinel did not start"
fi
# The contract test's judge (tests/e2e/tests/e2e/contract.rs): Schemathesis, pinned, in a
# virtual environment of its own.
# Installed while the tests build (a download, mostly): waited for before they run.
SCHEMATHESIS_VERSION=4.32.5
st="$LOCAL_DIR/st-venv/bin/st"
st_install=
if ! "$st" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
  log "installing Schemathesis $SCHEMATHESIS_VERSION (beside the build)"
  python3 -m venv "$LOCAL_DIR/st-venv" 2>/dev/null \
    || { apt_install python3-venv && python3 -m venv "$LOCAL_DIR/st-venv"; }
  "$LOCAL_DIR/st-venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" &
  st_install=$!
fi
export SCHEMATHESIS_BIN="$st"
# The console's browser tests (tests/e2e/tests/e2e/console.rs): Debian's Chromium and its
# WebDriver, installed beside the build too.
browser_install=
if ! command -v chromedriver >/dev/null || [ ! -x /usr/lib/chromium/chromium ]; then
  apt_install chromium chromium-driver &
  browser_install=$!
fi
started=$SECONDS
# The tests build in the profile scripts/up.sh builds (`quick`), so the dependencies compiled
# there are not compiled again; the process-level tests run the services' binary of it.
CFLAGS="$QUICK_CFLAGS" cargo build --profile quick --workspace --locked --bins
CFLAGS="$QUICK_CFLAGS" cargo test --profile quick --workspace --locked --no-run "$@"
if [ -n "$st_install" ]; then
  wait "$st_install" || die "installing Schemathesis $SCHEMATHESIS_VERSION failed"
fi
if [ -n "$browser_install" ]; then
  wait "$browser_install" || die "installing chromium and chromium-driver failed"
fi
mkdir -p "$LOCAL_DIR"
out="$LOCAL_DIR/test-output.log"
set +e
# Every test binary runs to the end even when one fails (a latency miss in the chaos binary,
# which cargo runs first, must not leave the rest unrun); cargo lists the failures at the end.
CFLAGS="$QUICK_CFLAGS" cargo test --profile quick --workspace --locked --no-fail-fast "$@" 2>&1 \
  | tee "$out"
rc=${PIPESTATUS[0]}
set -e
read -r passed failed < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i }
  } END { print p + 0, f + 0 }' "$out")
log "tests finished in $((SECONDS - started)) s (exit $rc)"
# One closing line over all test binaries (cargo prints one per binary, the last often a
# doc-test run with nothing in it).
echo "tests: ${passed:-0} passed, ${failed:-0} failed"
if [ "$rc" -eq 0 ] && [ "${passed:-0}" -eq 0 ]; then
  die "cargo test ran no test"
fi
exit "$rc"
