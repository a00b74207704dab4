#!/usr/bin/env bash
# The whole test suite against the real stack: PostgreSQL, Redis and Kafka are installed and
# started when needed, then every test of the workspace runs. CI runs exactly this.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SAGAPAY_ROOT"

"$SAGAPAY_ROOT/scripts/stack.sh" up
command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs)"

# Databases of test namespaces from earlier, interrupted runs (tests drop their own).
PGPASSWORD="$PG_PASSWORD" psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -Atq \
  -c "SELECT datname FROM pg_database WHERE datname ~ '^t_[0-9a-f]{12}_'" \
  | while read -r db; do
      PGPASSWORD="$PG_PASSWORD" psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -q \
        -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true
    done

started=$SECONDS
cargo test --workspace --locked "$@"
log "tests finished in $((SECONDS - started)) s"
