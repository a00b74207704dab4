#!/usr/bin/env bash
# The local stack without Docker: PostgreSQL and Redis from Debian's packages, Apache Kafka
# (KRaft, one combined broker+controller) from Maven Central, run on the machine's JDK.
#
#   scripts/stack.sh up       install what is missing, start what is stopped, wait for health
#   scripts/stack.sh up --brokers 3
#                             Kafka as a cluster of three nodes (KRaft, three replicas, two in
#                             sync for a write); the services find it through .local/kafka/cluster.env
#   scripts/stack.sh up --secure
#                             Kafka (one node) as production runs it: TLS (the stack's own CA,
#                             PEM) and SASL/SCRAM on its one listener, a user per service, KRaft's
#                             authorizer (nothing allowed without an ACL); scripts/services.sh
#                             applies the namespace's ACLs and gives each service its own user;
#                             a Redis on 6380 over TLS with a password for the gateway; and the
#                             services over HTTPS (the stack's certificate, each trusting its CA).
#                             Its data is kept apart (.local/kafka/secure); the tests need the
#                             plain one (scripts/stack.sh down, then up)
#   scripts/stack.sh down     stop Kafka, Redis and PostgreSQL
#   scripts/stack.sh status   say what answers
#
# `up` is idempotent: when everything is healthy it changes nothing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_DIR="$LOCAL_DIR/kafka"
REDIS_DIR="$LOCAL_DIR/redis"

# ---------------------------------------------------------------- PostgreSQL
pg_version() {
  ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1
}

pg_ready() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; }

pg_up() {
  if ! command -v pg_ctlcluster >/dev/null || [ -z "$(pg_version)" ]; then
    apt_install postgresql postgresql-client
  fi
  local ver; ver="$(pg_version)"
  [ -n "$ver" ] || die "PostgreSQL is not installed and could not be installed"
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $1"/"$2}' | grep -qx "$ver/main"; then
    log "creating PostgreSQL $ver cluster 'main'"
    as_root pg_createcluster "$ver" main >/dev/null
  fi
  pg_tls "$ver"
  pg_socket_login "$ver"
  local conf="/etc/postgresql/$ver/main/conf.d/sagapay.conf"
  local want; want="$(cat "$SAGAPAY_ROOT/infra/postgres/sagapay.conf")"
  if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
    log "installing $conf"
    as_root mkdir -p "$(dirname "$conf")"
    printf '%s\n' "$want" | as_root tee "$conf" >/dev/null
    if pg_ready; then
      log "restarting PostgreSQL to apply configuration"
      as_root pg_ctlcluster "$ver" main restart
    fi
  fi
  if ! pg_ready; then
    log "starting PostgreSQL $ver"
    as_root pg_ctlcluster "$ver" main start || true
  fi
  wait_until 60 "PostgreSQL" pg_ready || {
    tail -n 30 "/var/log/postgresql/postgresql-$ver-main.log" >&2 2>/dev/null || true
    die "PostgreSQL did not answer on 127.0.0.1:$PG_PORT within 60 s (log above)"
  }
  # The services' default credentials. CREATEDB: each service creates its own database.
  as_root runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres <<SQL >/dev/null
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END
\$\$;
-- Statements per payment (scripts/bench.sh): every database's statistics, readable and
-- resettable by the services' user.
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
GRANT pg_read_all_stats TO $PG_USER;
-- The production-mode test starts a service as a user of its own, with a real password.
ALTER ROLE $PG_USER CREATEROLE;
GRANT EXECUTE ON FUNCTION pg_stat_statements_reset(oid, oid, bigint) TO $PG_USER;
SQL
  PGPASSWORD="$PG_PASSWORD" psql -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -c 'select 1' >/dev/null \
    || die "PostgreSQL answers but user $PG_USER cannot log in over TCP (check pg_hba.conf)"
  PGPASSWORD="$PG_PASSWORD" psql -q -h "$PG_SOCKET_DIR" -p "$PG_PORT" -U "$PG_USER" -d postgres -c 'select 1' >/dev/null \
    || die "PostgreSQL answers but user $PG_USER cannot log in over its socket in $PG_SOCKET_DIR (check pg_hba.conf)"
  log "PostgreSQL $ver ready on 127.0.0.1:$PG_PORT (user $PG_USER)"
}

# TLS for the local server: a certificate authority made once per machine (its key thrown
# away after signing) and the server certificate it signed for localhost and 127.0.0.1, so
# clients can connect with sslmode=verify-full&sslrootcert=$PG_TLS_DIR/ca.crt (what the
# production-mode test does). infra/postgres/sagapay.conf names the server's files.
pg_tls() {
  as_root test -f "$PG_TLS_DIR/server.crt" && return 0
  command -v openssl >/dev/null || apt_install openssl
  log "creating a local CA and the PostgreSQL server certificate in $PG_TLS_DIR"
  local tmp; tmp="$(mktemp -d)"
  (
    cd "$tmp"
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
      -keyout ca.key -out ca.crt -days 3650 -subj "/CN=SagaPay local CA" 2>/dev/null
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
      -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out server.crt -days 3650 -extfile server.ext 2>/dev/null
  ) || { rm -rf "$tmp"; die "creating the PostgreSQL certificates failed"; }
  as_root install -d -o postgres -g postgres -m 0755 "$PG_TLS_DIR"
  as_root install -o postgres -g postgres -m 0600 "$tmp/server.key" "$PG_TLS_DIR/server.key"
  as_root install -o postgres -g postgres -m 0644 "$tmp/server.crt" "$PG_TLS_DIR/server.crt"
  as_root install -o postgres -g postgres -m 0644 "$tmp/ca.crt" "$PG_TLS_DIR/ca.crt"
  rm -rf "$tmp"
  if pg_ready; then
    as_root pg_ctlcluster "$1" main reload
  fi
}

# The services' user logs in over the server's Unix socket with its password (the default
# SAGAPAY_POSTGRES_URL): Debian's pg_hba.conf lets local users in only as the system user of
# the same name (peer). One line, above that rule, for the services' user alone.
pg_socket_login() {
  local hba="/etc/postgresql/$1/main/pg_hba.conf"
  local line="local   all             $PG_USER                                 scram-sha-256"
  as_root grep -qxF "$line" "$hba" && return 0
  log "letting $PG_USER log in over the socket with its password ($hba)"
  as_root sed -i "0,/^local[[:space:]]\+all[[:space:]]\+all[[:space:]]/s//$line\n&/" "$hba"
  as_root grep -qxF "$line" "$hba" || printf '%s\n' "$line" | as_root tee -a "$hba" >/dev/null
  if pg_ready; then
    as_root pg_ctlcluster "$1" main reload
  fi
}

pg_down() {
  local ver; ver="$(pg_version)"
  if [ -n "$ver" ] && pg_ready; then
    log "stopping PostgreSQL"
    as_root pg_ctlcluster "$ver" main stop -m fast || true
  fi
}

# ---------------------------------------------------------------- Redis
redis_ready() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }

redis_up() {
  command -v redis-server >/dev/null || apt_install redis-server
  if ! redis_ready; then
    mkdir -p "$REDIS_DIR"
    log "starting Redis"
    # Redis holds only the idempotency fast path and counters that can be rebuilt:
    # no persistence, PostgreSQL is the system of record.
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes \
      --dir "$REDIS_DIR" --logfile "$REDIS_DIR/redis.log" --pidfile "$REDIS_DIR/redis.pid" \
      --save "" --appendonly no >/dev/null
  fi
  wait_until 30 "Redis" redis_ready || {
    tail -n 20 "$REDIS_DIR/redis.log" >&2 2>/dev/null || true
    die "Redis did not answer PING on 127.0.0.1:$REDIS_PORT within 30 s"
  }
  log "Redis ready on 127.0.0.1:$REDIS_PORT"
}

redis_down() {
  if redis_ready; then
    log "stopping Redis"
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  fi
}

# The secure stack's Redis (up --secure): a second server, TLS only on REDIS_TLS_PORT with the
# secure Kafka's certificate (the stack's CA) and a password, as production wants it.
REDIS_TLS_PORT=6380
redis_tls_ready() {
  [ -f "$SECURE_DIR/redis.password" ] || return 1
  [ "$(REDISCLI_AUTH="$(cat "$SECURE_DIR/redis.password")" redis-cli --tls --cacert "$SECURE_DIR/tls/ca.pem" \
    -h 127.0.0.1 -p "$REDIS_TLS_PORT" ping 2>/dev/null)" = "PONG" ]
}

redis_secure_up() {
  [ -f "$SECURE_DIR/redis.password" ] \
    || (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=\n' > "$SECURE_DIR/redis.password")
  if ! redis_tls_ready; then
    mkdir -p "$REDIS_DIR/tls"
    log "starting Redis over TLS (127.0.0.1:$REDIS_TLS_PORT, with a password)"
    # The password through standard input, not the command line (ps shows that).
    printf 'requirepass %s\n' "$(cat "$SECURE_DIR/redis.password")" \
      | redis-server - --bind 127.0.0.1 --port 0 --tls-port "$REDIS_TLS_PORT" \
        --tls-cert-file "$SECURE_DIR/tls/node.crt" --tls-key-file "$SECURE_DIR/tls/node.key" \
        --tls-auth-clients no --daemonize yes --dir "$REDIS_DIR/tls" \
        --logfile "$REDIS_DIR/tls/redis.log" --pidfile "$REDIS_DIR/tls/redis.pid" \
        --save "" --appendonly no >/dev/null
  fi
  wait_until 30 "Redis over TLS" redis_tls_ready || {
    tail -n 20 "$REDIS_DIR/tls/redis.log" >&2 2>/dev/null || true
    die "Redis over TLS did not answer PING on 127.0.0.1:$REDIS_TLS_PORT within 30 s"
  }
  printf 'SAGAPAY_REDIS_URL=rediss://:%s@127.0.0.1:%s\nSAGAPAY_REDIS_CA_FILE=%s\n' \
    "$(cat "$SECURE_DIR/redis.password")" "$REDIS_TLS_PORT" "$SECURE_DIR/tls/ca.pem" >> "$CLUSTER_ENV"
  # The services serve HTTPS with the stack's certificate, and call each other trusting its CA.
  printf 'SAGAPAY_TLS_CERT_FILE=%s\nSAGAPAY_TLS_KEY_FILE=%s\nSAGAPAY_SERVICE_CA_FILE=%s\n' \
    "$SECURE_DIR/tls/node.crt" "$SECURE_DIR/tls/node.key" "$SECURE_DIR/tls/ca.pem" >> "$CLUSTER_ENV"
  log "Redis ready on 127.0.0.1:$REDIS_TLS_PORT (TLS, a password)"
}

redis_secure_down() {
  local pid; pid="$(cat "$REDIS_DIR/tls/redis.pid" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    log "stopping Redis over TLS"
    kill "$pid" 2>/dev/null || true
  fi
}

# ---------------------------------------------------------------- Kafka
# One node (the default: .local/kafka/{data,logs}, port 9092) or three (--brokers 3:
# .local/kafka/cluster3/node-<i>/, ports 9092, 9094, 9096, three replicas, two in sync for a
# write). Every node is made from infra/kafka/server.properties. The services find the
# cluster through $CLUSTER_ENV, which `up` writes and scripts/lib.sh reads.

SECURE=0
SECURE_DIR="$KAFKA_DIR/secure"

# node_dir NODES I: where node I of a cluster of NODES keeps its data, logs and pid.
node_dir() {
  if [ "$1" -ne 1 ]; then echo "$KAFKA_DIR/cluster$1/node-$2"
  elif [ "$SECURE" = 1 ]; then echo "$SECURE_DIR"
  else echo "$KAFKA_DIR"; fi
}

# The secure node's CA, certificate (for 127.0.0.1, signed by the CA; key and chain in one PEM
# file, as Kafka's PEM key store wants) and a password per user: made once, kept.
kafka_secure_files() {
  local tls="$SECURE_DIR/tls" users="$SECURE_DIR/users" u
  mkdir -p "$tls" "$users"
  chmod 700 "$SECURE_DIR"
  if [ ! -f "$tls/node.pem" ]; then
    log "making the secure Kafka's CA and certificate ($tls)"
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -days 3650 \
      -subj "/CN=SagaPay local Kafka CA" -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -subj "/CN=127.0.0.1" \
      -keyout "$tls/node.key" -out "$tls/node.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' > "$tls/node.ext"
    openssl x509 -req -in "$tls/node.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
      -days 825 -extfile "$tls/node.ext" -out "$tls/node.crt" 2>/dev/null
    { openssl pkcs8 -topk8 -nocrypt -in "$tls/node.key"; cat "$tls/node.crt"; } > "$tls/node.pem"
  fi
  for u in admin "${SERVICES[@]}" sagapayctl; do
    [ -f "$users/$u.password" ] \
      || (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=\n' > "$users/$u.password")
  done
}

# The --add-scram arguments of the storage format: every user exists before the first start.
kafka_scram_args() {
  local f
  for f in "$SECURE_DIR/users"/*.password; do
    printf -- '--add-scram\nSCRAM-SHA-512=[name=%s,password=%s]\n' "$(basename "$f" .password)" "$(cat "$f")"
  done
}
node_port() { echo $((KAFKA_PORT + 2 * ($1 - 1))); }

kafka_pid() {
  local pid
  pid="$(cat "$1/kafka.pid" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

# Started: the port answers, our process lives, and it logged its start (or was seen started
# before: started.pid, since the log rolls over and drops old lines).
kafka_ready() {
  local dir="$1" port="$2" pid; pid="$(kafka_pid "$dir")"
  port_open "$port" && [ -n "$pid" ] || return 1
  [ "$(cat "$dir/started.pid" 2>/dev/null)" = "$pid" ] \
    || grep -qs "Kafka Server started" "$dir/logs"/server.log*
}

# The cluster that runs now (1 or 3 nodes), or nothing.
kafka_running_nodes() {
  local n
  for n in 1 3; do
    if [ -n "$(kafka_pid "$(node_dir "$n" 1)")" ]; then echo "$n"; return; fi
  done
}

kafka_resolve() {
  local pom="$SAGAPAY_ROOT/infra/kafka/pom.xml"
  local stamp="$KAFKA_DIR/libs/.pom.sha256"
  local sum; sum="$(sha256sum "$pom" | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then return 0; fi
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  log "resolving Apache Kafka from Maven Central (infra/kafka/pom.xml)"
  rm -rf "$KAFKA_DIR/libs"
  mvn -q -B --no-transfer-progress -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$KAFKA_DIR/libs" || die "could not resolve Kafka's artifacts with Maven"
  echo "$sum" > "$stamp"
}

# kafka_properties NODES I: node I's server.properties from the template.
kafka_properties() {
  local nodes="$1" i="$2" dir voters="" v replicas=1 min_isr=1
  dir="$(node_dir "$nodes" "$i")"
  for v in $(seq 1 "$nodes"); do
    voters="${voters:+$voters,}$v@127.0.0.1:$(( $(node_port "$v") + 1 ))"
  done
  if [ "$nodes" -eq 3 ]; then replicas=3; min_isr=2; fi
  sed -e "s|@NODE_ID@|$i|" -e "s|@VOTERS@|$voters|" \
    -e "s|@PORT@|$(node_port "$i")|" -e "s|@CONTROLLER_PORT@|$(( $(node_port "$i") + 1 ))|" \
    -e "s|@DATA_DIR@|$dir/data|" -e "s|@REPLICAS@|$replicas|" -e "s|@MIN_ISR@|$min_isr|" \
    "$SAGAPAY_ROOT/infra/kafka/server.properties" > "$dir/server.properties"
  if [ "$SECURE" = 1 ]; then
    sed -e "s|@PORT@|$(node_port "$i")|" -e "s|@CONTROLLER_PORT@|$(( $(node_port "$i") + 1 ))|" \
      -e "s|@ADMIN_PASSWORD@|$(cat "$SECURE_DIR/users/admin.password")|" \
      -e "s|@KEYSTORE@|$SECURE_DIR/tls/node.pem|" -e "s|@TRUSTSTORE@|$SECURE_DIR/tls/ca.pem|" \
      -e "s|@NODE_PRINCIPAL@|CN=127.0.0.1|" \
      "$SAGAPAY_ROOT/infra/kafka/secure.properties" >> "$dir/server.properties"
  fi
}

# kafka_tool DIR ARGS...: one of Kafka's tools (java with the broker's class path, logging into DIR/logs).
kafka_tool() {
  local dir="$1"; shift
  java -Xms512m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$SAGAPAY_ROOT/infra/kafka/log4j2.properties" \
    -Dkafka.logs.dir="$dir/logs" -cp "$KAFKA_DIR/libs/*" "$@"
}

kafka_start_node() {
  local nodes="$1" i="$2" cluster_id="$3" dir port
  dir="$(node_dir "$nodes" "$i")"; port="$(node_port "$i")"
  if kafka_ready "$dir" "$port"; then
    kafka_pid "$dir" > "$dir/started.pid"
    return 0
  fi
  port_open "$port" && die "something else listens on 127.0.0.1:$port; stop it first"
  mkdir -p "$dir/data" "$dir/logs"
  kafka_properties "$nodes" "$i"
  if [ ! -f "$dir/data/meta.properties" ]; then
    log "formatting KRaft storage of node $i"
    local scram=()
    [ "$SECURE" = 1 ] && mapfile -t scram < <(kafka_scram_args)
    kafka_tool "$dir" kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" \
      "${scram[@]}" >"$dir/logs/format.log" 2>&1 \
      || { cat "$dir/logs/format.log" >&2; die "formatting Kafka storage failed"; }
  fi
  log "starting Kafka node $i of $nodes (127.0.0.1:$port)"
  rm -f "$dir/logs"/server.log.* "$dir/started.pid"
  : > "$dir/logs/server.log"
  # A subshell that becomes java (exec), so the pid recorded is the broker's own.
  ( exec > "$dir/logs/stdout.log" 2>&1; exec nohup java -Xms512m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -Djava.awt.headless=true -Dlog4j2.configurationFile="$SAGAPAY_ROOT/infra/kafka/log4j2.properties" \
      -Dkafka.logs.dir="$dir/logs" -cp "$KAFKA_DIR/libs/*" kafka.Kafka "$dir/server.properties" ) &
  echo $! > "$dir/kafka.pid"
}

kafka_up() {
  local nodes="$1" running i dir cluster_id
  if [ "$SECURE" = 1 ] && [ -n "$(SECURE=0 kafka_running_nodes)" ]; then
    die "the plain Kafka runs: stop it first (scripts/stack.sh down), then up --secure"
  fi
  if [ "$SECURE" = 0 ] && [ -n "$(kafka_pid "$SECURE_DIR")" ]; then
    die "the secure Kafka runs (up --secure); the tests and scripts/up.sh need the plain one: scripts/stack.sh down, then up"
  fi
  [ "$SECURE" = 1 ] && kafka_secure_files
  running="$(kafka_running_nodes)"
  if [ -n "$running" ] && [ "$running" != "$nodes" ]; then
    die "a Kafka of $running node(s) runs; stop it first (scripts/stack.sh down), then up --brokers $nodes"
  fi
  kafka_resolve
  local java_major
  java_major="$(java -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.specification.version/ {print $2}')"
  [ "${java_major%%.*}" -ge 17 ] || die "Kafka 4 needs Java 17 or newer, found $java_major"
  mkdir -p "$(node_dir "$nodes" 1)"
  # Every node of a cluster is formatted with the same id.
  local id_file; id_file="$(dirname "$(node_dir "$nodes" 1)")/cluster.id"
  [ "$nodes" -eq 1 ] && id_file="$KAFKA_DIR/cluster.id"
  if [ ! -f "$id_file" ]; then
    kafka_tool "$KAFKA_DIR" kafka.tools.StorageTool random-uuid > "$id_file"
  fi
  cluster_id="$(cat "$id_file")"
  for i in $(seq 1 "$nodes"); do kafka_start_node "$nodes" "$i" "$cluster_id"; done
  for i in $(seq 1 "$nodes"); do
    dir="$(node_dir "$nodes" "$i")"
    wait_until 90 "Kafka node $i" kafka_ready "$dir" "$(node_port "$i")" || {
      tail -n 40 "$dir/logs/stdout.log" "$dir/logs/server.log" >&2 2>/dev/null || true
      die "Kafka node $i did not start on 127.0.0.1:$(node_port "$i") within 90 s (logs above, $dir/logs)"
    }
    kafka_pid "$dir" > "$dir/started.pid"
  done
  # What the services need to find this cluster (scripts/lib.sh reads it).
  local brokers="" replicas=1
  for i in $(seq 1 "$nodes"); do brokers="${brokers:+$brokers,}127.0.0.1:$(node_port "$i")"; done
  [ "$nodes" -eq 3 ] && replicas=3
  (umask 077; printf 'SAGAPAY_KAFKA_BROKERS=%s\nSAGAPAY_KAFKA_REPLICATION_FACTOR=%s\n' "$brokers" "$replicas" > "$CLUSTER_ENV")
  if [ "$SECURE" = 1 ]; then
    # {service}: each service's own user (scripts/services.sh puts its name in).
    printf 'SAGAPAY_KAFKA_CLIENT_CONFIG=%s\nSAGAPAY_KAFKA_SASL_PASSWORD_FILE=%s\n' \
      "security.protocol=SASL_SSL,sasl.mechanisms=SCRAM-SHA-512,sasl.username={service},ssl.ca.location=$SECURE_DIR/tls/ca.pem" \
      "$SECURE_DIR/users/{service}.password" >> "$CLUSTER_ENV"
  fi
  log "Kafka ready: $nodes node(s) on $brokers$([ "$SECURE" = 1 ] && echo ' (SASL_SSL, ACLs)')"
}

kafka_stop_node() {
  local dir="$1" pid; pid="$(kafka_pid "$dir")"
  if [ -n "$pid" ]; then
    log "stopping Kafka (pid $pid)"
    kill "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/kafka.pid"
}

kafka_down() {
  local i
  for i in 3 2 1; do kafka_stop_node "$(node_dir 3 "$i")"; done
  kafka_stop_node "$KAFKA_DIR"
  kafka_stop_node "$SECURE_DIR"
  rm -f "$CLUSTER_ENV"
}

status() {
  local rc=0
  if pg_ready; then echo "postgresql  up    127.0.0.1:$PG_PORT"; else echo "postgresql  down"; rc=1; fi
  if redis_ready; then echo "redis       up    127.0.0.1:$REDIS_PORT"; else echo "redis       down"; rc=1; fi
  local nodes i dir
  [ -n "$(kafka_pid "$SECURE_DIR")" ] && SECURE=1
  nodes="$(kafka_running_nodes)"
  if [ -z "$nodes" ]; then echo "kafka       down"; rc=1; fi
  [ "$SECURE" = 1 ] && echo "kafka       secure: SASL_SSL, a user per service, ACLs ($SECURE_DIR)"
  for i in $(seq 1 "${nodes:-0}"); do
    dir="$(node_dir "$nodes" "$i")"
    if kafka_ready "$dir" "$(node_port "$i")"; then
      echo "kafka       up    127.0.0.1:$(node_port "$i") (node $i of $nodes, pid $(kafka_pid "$dir"))"
    else echo "kafka       down  node $i of $nodes"; rc=1; fi
  done
  return $rc
}

brokers=""
command="${1:-}"
[ $# -gt 0 ] && shift
while [ $# -gt 0 ]; do
  case "$1" in
    --brokers) brokers="${2:-}"; shift 2 ;;
    --secure) SECURE=1; shift ;;
    *) die "unknown option $1" ;;
  esac
done
case "$brokers" in
  # Without --brokers: the cluster that runs, or one node.
  '') brokers="$(kafka_running_nodes)"; brokers="${brokers:-1}" ;;
  1|3) ;;
  *) die "--brokers is 1 or 3" ;;
esac
[ "$SECURE" = 1 ] && [ "$brokers" != 1 ] && die "--secure runs one node"


case "$command" in
  up)
    started=$SECONDS
    pg_up
    redis_up
    kafka_up "$brokers"
    if [ "$SECURE" = 1 ]; then redis_secure_up; else redis_secure_down; fi
    # Not a server of the stack: the dashboard test starts a Prometheus of its own.
    command -v prometheus >/dev/null || apt_install --no-install-recommends prometheus
    # Not servers either: what building the services needs beyond Rust (OpenSSL's headers
    # and pkg-config, for TLS to PostgreSQL, Kafka and Redis).
    if ! command -v pkg-config >/dev/null || ! pkg-config --exists openssl 2>/dev/null; then
      apt_install pkg-config libssl-dev
    fi
    log "stack up in $((SECONDS - started)) s"
    ;;
  down)
    kafka_down
    redis_secure_down
    redis_down
    pg_down
    ;;
  status) status ;;
  *) echo "usage: $0 up [--brokers 1|3 | --secure]|down|status" >&2; exit 2 ;;
esac
