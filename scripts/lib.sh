# Shared helpers for SagaPay's scripts. Source it; do not run it.
# shellcheck shell=bash

SAGAPAY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL_DIR="${SAGAPAY_LOCAL_DIR:-$SAGAPAY_ROOT/.local}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SAGAPAY_ROOT/target}"
# The C code of the `quick` build (librdkafka above all, the longest unit of a cold build; it
# asks for -O2 -g by itself): optimised at level 1 without debug information, like the Rust
# code of that profile. up.sh and test.sh build with the same flags, so neither rebuilds what
# the other built.
QUICK_CFLAGS="-O1 -g0"

PG_PORT=5432
# Where the server's Unix socket is (Debian's default): the services' default way in.
PG_SOCKET_DIR=/var/run/postgresql
REDIS_PORT=6379
KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
PG_USER=sagapay
PG_PASSWORD=sagapay
# The Kafka cluster `scripts/stack.sh up` started (one node or three): its brokers and the
# replication its topics need, for the services and tests started from these scripts. A
# setting already in the environment wins.
CLUSTER_ENV="$LOCAL_DIR/kafka/cluster.env"
if [ -f "$CLUSTER_ENV" ]; then
  while IFS='=' read -r name value; do
    case "$name" in
      SAGAPAY_KAFKA_BROKERS | SAGAPAY_KAFKA_REPLICATION_FACTOR) ;;
      # The secure Kafka (scripts/stack.sh up --secure): {service} is each service's user.
      SAGAPAY_KAFKA_CLIENT_CONFIG | SAGAPAY_KAFKA_SASL_PASSWORD_FILE) ;;
      # ... its Redis over TLS with a password, and the services' HTTPS.
      SAGAPAY_REDIS_URL | SAGAPAY_REDIS_CA_FILE) ;;
      SAGAPAY_TLS_CERT_FILE | SAGAPAY_TLS_KEY_FILE | SAGAPAY_SERVICE_CA_FILE) ;;
      *) continue ;;
    esac
    [ -n "${!name:-}" ] || export "$name=$value"
  done < "$CLUSTER_ENV"
fi
# The local server's TLS files and the CA that signed them (scripts/stack.sh).
PG_TLS_DIR=/var/lib/postgresql/sagapay-tls

# The services and their ports, from the one list (infra/services.tsv).
SERVICES=()
declare -A SERVICE_PORT=()
while IFS=$'\t' read -r name port; do
  case "$name" in '' | '#'*) continue ;; esac
  SERVICES+=("$name")
  SERVICE_PORT[$name]=$port
done < "$SAGAPAY_ROOT/infra/services.tsv"

log() { printf '\033[1;34m[sagapay]\033[0m %s\n' "$*" >&2; }
warn() { printf '\033[1;33m[sagapay]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[sagapay] error:\033[0m %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Runs apt-get update at most once per machine boot of this checkout's stack.
apt_install() {
  local stamp="$LOCAL_DIR/.apt-updated"
  mkdir -p "$LOCAL_DIR"
  if [ ! -f "$stamp" ]; then
    log "apt-get update"
    as_root apt-get update -qq || die "apt-get update failed"
    touch "$stamp"
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
    || die "apt-get install $* failed"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_until SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s until it succeeds.
wait_until() {
  local timeout_s="$1" what="$2"; shift 2
  local deadline=$((SECONDS + timeout_s))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      return 1
    fi
    sleep 0.2
  done
}

# CPU ticks spent so far per part of the stack: the services by name, PostgreSQL, Kafka (the
# JVM), Redis; one "<part> <ticks>" line each, sorted. Processes that start or stop between two
# snapshots (the load test itself) are not counted.
cpu_snapshot() {
  local p comm fields
  for p in /proc/[0-9]*; do
    comm="$(tr -d '\0' <"$p/comm" 2>/dev/null)" || continue
    # The one binary (`sagapay <service>`) is named by the service it runs.
    if [ "$comm" = "sagapay" ]; then
      comm="sagapay-$(tr '\0' '\n' <"$p/cmdline" 2>/dev/null | sed -n 2p)" || continue
    fi
    fields="$(sed 's/.*) //' "$p/stat" 2>/dev/null)" || continue
    # shellcheck disable=SC2086
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
