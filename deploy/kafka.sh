#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft, combined broker + controller) on
# 127.0.0.1, run from the broker jars on Maven Central. No Docker needed.
#
#   deploy/kafka.sh start|stop|status --home DIR --port N --controller-port N [--heap SIZE]
#                  [--sasl-ssl]
#
# --sasl-ssl: the client listener speaks SASL_SSL with SCRAM-SHA-512 (see its block below).
#
# `meterstream kafka start|stop|status` calls this with values from the
# project's configuration (meterstream/core/config.py holds the defaults).
# With --brokers N (and --node K, `kill`) it runs a local cluster instead: see
# "Local cluster" below.
#
# DIR/libs   broker jars, resolved once with Maven and reused
# DIR/data   KRaft metadata and topic logs, formatted once and reused
# DIR/kafka.log, DIR/kafka.pid, DIR/server.properties
set -euo pipefail
# Topic logs hold webhook bodies and the registry: for this user only (the broker inherits it).
umask 077

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pom="$here/kafka/pom.xml"
log4j="$here/kafka/log4j2.properties"

die() { echo "kafka: $*" >&2; exit 1; }
usage() { die "usage: deploy/kafka.sh start|stop|status --home DIR --port N --controller-port N [--heap SIZE] [--sasl-ssl]"; }

[ $# -ge 1 ] || usage

# --- Local cluster options (the "Local cluster" block below uses them), taken out of the
# arguments here so that the single-broker parsing below stays as it is.
brokers="" node="" heap_given="" ready_given=""
cluster_rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --brokers) [ $# -ge 2 ] || usage; brokers=$2; shift 2 ;;
    --node) [ $# -ge 2 ] || usage; node=$2; shift 2 ;;
    *) [ "$1" = --heap ] && heap_given=1
       [ "$1" = --ready-timeout ] && ready_given=1
       cluster_rest+=("$1"); shift ;;
  esac
done
set -- "${cluster_rest[@]}"
# --- end of the local cluster options

command=$1; shift
home="" port="" controller_port="" heap="1g" ready_timeout=90
sasl_ssl=""  # --sasl-ssl
while [ $# -gt 0 ]; do
  case "$1" in
    --home) home=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --controller-port) controller_port=$2; shift 2 ;;
    --heap) heap=$2; shift 2 ;;
    --ready-timeout) ready_timeout=$2; shift 2 ;;
    --sasl-ssl) sasl_ssl=1; shift ;;
    *) usage ;;
  esac
done
[ -n "$home" ] && [ -n "$port" ] && [ -n "$controller_port" ] || usage
mkdir -p "$home"
home=$(cd "$home" && pwd)
# A home made by a version before the umask is 0755 with 0644 files: close it.
if [ -n "$(find "$home" -maxdepth 0 -perm /077)" ]; then
  chmod -R go-rwx "$home"
fi
libs="$home/libs" data="$home/data" pidfile="$home/kafka.pid" logfile="$home/kafka.log" props="$home/server.properties"

require_java() {
  command -v java >/dev/null 2>&1 || die "Java is not installed. Install a Java 17+ runtime (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)."
  local major
  major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)
  [ -n "$major" ] && [ "$major" -ge 17 ] || die "Kafka 4 needs Java 17 or newer; found: $(java -version 2>&1 | head -n 1)"
}

require_maven() {
  command -v mvn >/dev/null 2>&1 || die "Maven is not installed; it resolves the Kafka broker jars. Install it (Debian/Ubuntu: apt-get install maven)."
}

# The jar set is keyed by the pom's checksum, so a version bump resolves anew.
resolve_jars() {
  local want
  want=$(sha256sum "$pom" | cut -d' ' -f1)
  if [ -f "$libs/.resolved" ] && [ "$(cat "$libs/.resolved")" = "$want" ]; then
    return
  fi
  require_maven
  echo "kafka: resolving broker jars with Maven into $libs" >&2
  rm -rf "$libs.tmp"
  if ! mvn -B -q -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$libs.tmp" > "$home/maven.log" 2>&1; then
    tail -n 40 "$home/maven.log" >&2
    die "Maven could not resolve the Kafka jars (full output in $home/maven.log)"
  fi
  echo "$want" > "$libs.tmp/.resolved"
  rm -rf "$libs"
  mv "$libs.tmp" "$libs"
}

write_properties() {
  cat > "$props" <<PROPS
# Written by deploy/kafka.sh on every start; edit the script, not this file.
node.id=1
process.roles=broker,controller
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
controller.quorum.voters=1@127.0.0.1:$controller_port
log.dirs=$data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# A Convex batch is at most 128 events; console events can be long, so allow
# bodies up to the receiver's limit with room for the record overhead.
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
PROPS
}

java_cmd=(java -Xms256m "-Xmx$heap" -XX:+UseG1GC -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$log4j" -cp "$libs/*")

format_storage() {
  [ -f "$data/meta.properties" ] && return
  local cluster_id
  # A Kafka cluster id is 16 random bytes, base64url without padding; one that starts
  # with '-' would be read as an option by the storage tool, so draw again.
  cluster_id=-
  while [[ $cluster_id == -* ]]; do
    cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
  done
  echo "kafka: formatting KRaft storage in $data (cluster $cluster_id)" >&2
  "${java_cmd[@]}" kafka.tools.StorageTool format --ignore-formatted -t "$cluster_id" -c "$props" \
    ${sasl_ssl_format_args[@]+"${sasl_ssl_format_args[@]}"} >> "$logfile" 2>&1 \
    || die "formatting storage failed; see $logfile"
}

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# Sends a Metadata v4 request (all topics) and succeeds when the answer
# carries our correlation id and at least one broker: the broker is serving.
answers_metadata() {
  local reply
  reply=$(timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    # size=23 | api_key=3 api_version=4 correlation_id=7 client_id="ms-probe" | topics=null allow_auto_create=false
    printf "\x00\x00\x00\x17\x00\x03\x00\x04\x00\x00\x00\x07\x00\x08ms-probe\xff\xff\xff\xff\x00" >&3
    head -c 16 <&3 | od -An -tx1 | tr -d " \n"
  ' _ "$port" 2>/dev/null) || return 1
  # bytes 4-7: correlation id; 8-11: throttle time; 12-15: broker count
  [ "${reply:8:8}" = "00000007" ] && [ "${reply:24:8}" != "00000000" ] && [ ${#reply} -eq 32 ]
}

start() {
  require_java
  sasl_ssl_prepare
  if pid=$(running_pid); then
    if answers_metadata; then
      echo "kafka: already running (pid $pid) on 127.0.0.1:$port"
      sasl_ssl_report
      return
    fi
  else
    resolve_jars
    mkdir -p "$data"
    write_properties
    sasl_ssl_properties
    format_storage
    echo "kafka: starting broker on 127.0.0.1:$port (controller $controller_port), log $logfile" >&2
    # setsid: the broker outlives the shell that started it and is not hit by its Ctrl-C.
    setsid "${java_cmd[@]}" kafka.Kafka "$props" >> "$logfile" 2>&1 < /dev/null &
    pid=$!
    echo "$pid" > "$pidfile"
  fi
  local deadline=$((SECONDS + ready_timeout))
  until answers_metadata; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$pidfile"
      echo "kafka: the broker exited during start; last lines of $logfile:" >&2
      tail -n 30 "$logfile" >&2
      exit 1
    fi
    [ $SECONDS -lt $deadline ] || die "the broker did not answer metadata requests within ${ready_timeout}s; see $logfile"
    sleep 0.2
  done
  echo "kafka: ready (pid $pid) on 127.0.0.1:$port"
  sasl_ssl_report
}

stop() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$pidfile"
    echo "kafka: not running"
    return
  fi
  kill -TERM "$pid"
  local deadline=$((SECONDS + 60))
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      echo "kafka: broker did not stop within 60s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
  rm -f "$pidfile"
  echo "kafka: stopped"
}

status() {
  local pid
  if ! pid=$(running_pid); then
    echo "kafka: not running"
    exit 3
  fi
  if answers_metadata; then
    echo "kafka: running (pid $pid) on 127.0.0.1:$port, answering metadata requests"
  else
    echo "kafka: process $pid is up but not answering on 127.0.0.1:$port"
    exit 4
  fi
}

# ---- SASL_SSL (--sasl-ssl) ----------------------------------------------------------------
# With --sasl-ssl the client listener on --port speaks SASL_SSL with SCRAM-SHA-512, as managed
# Kafka services do; the controller listener stays PLAINTEXT on 127.0.0.1 (internal to the
# broker). Its state, made once and reused, is DIR/sasl: a CA (ca.pem, the clients'
# METERSTREAM_KAFKA_CA_FILE), the broker's certificate for 127.0.0.1 and localhost signed by
# it, and the SCRAM user's password. The user is created when the storage is formatted, so a
# data directory formatted without it is refused rather than started with no user.
# Every hook below does nothing without --sasl-ssl.
sasl_dir="$home/sasl" sasl_user=meterstream sasl_mechanism=SCRAM-SHA-512
sasl_ssl_format_args=() sasl_bootstrap=""

# Whether the broker DIR's properties describe runs (or ran) with a SASL_SSL listener.
sasl_ssl_configured() { [ -f "$props" ] && grep -q '^listeners=SASL_SSL://' "$props"; }

sasl_ssl_prepare() {
  local running=""
  if running_pid > /dev/null; then
    running=plain
    ! sasl_ssl_configured || running=sasl
  fi
  if [ -z "$sasl_ssl" ]; then
    [ "$running" != sasl ] || die "the broker in $home runs with SASL_SSL: start it with --sasl-ssl, or stop it first"
    # Storage formatted now has no SCRAM user.
    [ -f "$data/meta.properties" ] || rm -f "$sasl_dir/user-formatted"
    return 0
  fi
  [ "$running" != plain ] || die "the broker in $home runs without SASL_SSL: stop it first"
  sasl_ssl_material
  sasl_ssl_user "$sasl_dir/user-formatted"
}

# The CA, the broker certificate and the user's password, made once in DIR/sasl. The
# certificate names 127.0.0.1, so every node of a local cluster presents the same one.
sasl_ssl_material() {
  command -v openssl >/dev/null 2>&1 || die "--sasl-ssl needs openssl to make the certificates (Debian/Ubuntu: apt-get install openssl)"
  mkdir -p "$sasl_dir"
  sasl_ssl_certificates
  [ -s "$sasl_dir/password" ] || head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' > "$sasl_dir/password"
}

# The SCRAM user goes into the KRaft metadata when $data is formatted; $1 marks that it
# did, so storage formatted without it is refused rather than started with no user.
sasl_ssl_user() {
  if [ ! -f "$data/meta.properties" ]; then
    sasl_ssl_format_args=(--add-scram "$sasl_mechanism=[name=$sasl_user,password=$(cat "$sasl_dir/password")]")
    touch "$1"
  elif [ ! -f "$1" ]; then
    die "$data was formatted without the SCRAM user that --sasl-ssl needs: remove $data (its topics) or use another --home"
  fi
}

sasl_ssl_certificates() {
  [ -s "$sasl_dir/broker.p12" ] && return
  echo "kafka: making a CA and the broker's certificate in $sasl_dir" >&2
  local ext="$sasl_dir/broker.ext"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$ext"
  {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=meterstream local Kafka CA" -keyout "$sasl_dir/ca.key" -out "$sasl_dir/ca.pem"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
      -keyout "$sasl_dir/broker.key" -out "$sasl_dir/broker.csr"
    openssl x509 -req -in "$sasl_dir/broker.csr" -CA "$sasl_dir/ca.pem" -CAkey "$sasl_dir/ca.key" \
      -CAcreateserial -days 825 -extfile "$ext" -out "$sasl_dir/broker.crt"
  } > "$sasl_dir/openssl.log" 2>&1 || { cat "$sasl_dir/openssl.log" >&2; die "openssl could not make the certificates"; }
  # A PKCS#12 key store: Kafka takes a PEM key store file only with an encrypted key, whose
  # PBES2 encryption not every Java reads; PKCS#12 of OpenSSL 3 Java 17 reads.
  head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' > "$sasl_dir/keystore-password"
  openssl pkcs12 -export -name broker -in "$sasl_dir/broker.crt" -inkey "$sasl_dir/broker.key" \
    -certfile "$sasl_dir/ca.pem" -passout "file:$sasl_dir/keystore-password" \
    -out "$sasl_dir/broker.p12.tmp" 2>> "$sasl_dir/openssl.log" \
    || { cat "$sasl_dir/openssl.log" >&2; die "openssl could not make the key store"; }
  mv "$sasl_dir/broker.p12.tmp" "$sasl_dir/broker.p12"
}

# Appended to the properties write_properties wrote: Java's Properties keeps the last value
# of a key, so these lines replace its listener settings and leave the rest shared.
sasl_ssl_properties() {
  [ -n "$sasl_ssl" ] || return 0
  cat >> "$props" <<PROPS
# --sasl-ssl: SASL_SSL with $sasl_mechanism for clients; the controller stays PLAINTEXT on loopback.
listeners=SASL_SSL://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=SASL_SSL://127.0.0.1:$port
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms=$sasl_mechanism
sasl.mechanism.inter.broker.protocol=$sasl_mechanism
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$sasl_user" password="$(cat "$sasl_dir/password")";
ssl.keystore.type=PKCS12
ssl.keystore.location=$sasl_dir/broker.p12
ssl.keystore.password=$(cat "$sasl_dir/keystore-password")
ssl.key.password=$(cat "$sasl_dir/keystore-password")
ssl.truststore.type=PEM
ssl.truststore.location=$sasl_dir/ca.pem
ssl.client.auth=none
PROPS
}

# Before a login a SASL_SSL listener answers only ApiVersions and SaslHandshake, so its
# readiness probe is an ApiVersions request over TLS, verified against the CA.
answers_api_versions_tls() {
  local reply
  # size=18 | api_key=18 api_version=0 correlation_id=7 client_id="ms-probe". s_client closes
  # at the end of its input, so the sleep keeps the connection open until the answer is in;
  # -brief sends its report to stderr, leaving stdout the broker's bytes.
  reply=$( { printf '\x00\x00\x00\x12\x00\x12\x00\x00\x00\x00\x00\x07\x00\x08ms-probe'; sleep 1; } \
    | timeout 3 openssl s_client -brief -verify_return_error -CAfile "$sasl_dir/ca.pem" \
        -verify_ip 127.0.0.1 -connect "127.0.0.1:$port" 2>/dev/null \
    | head -c 8 | od -An -tx1 | tr -d ' \n') || true
  # bytes 4-7: correlation id
  [ "${reply:8:8}" = "00000007" ]
}
if [ -n "$sasl_ssl" ] || { [ "$command" = status ] && sasl_ssl_configured; }; then
  answers_metadata() { answers_api_versions_tls; }
fi

sasl_ssl_report() {
  [ -n "$sasl_ssl" ] || return 0
  cat <<REPORT
kafka: SASL_SSL with $sasl_mechanism on ${sasl_bootstrap:-127.0.0.1:$port}; connect with:
  METERSTREAM_KAFKA=${sasl_bootstrap:-127.0.0.1:$port}
  METERSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL
  METERSTREAM_KAFKA_SASL_MECHANISM=$sasl_mechanism
  METERSTREAM_KAFKA_USERNAME=$sasl_user
  METERSTREAM_KAFKA_PASSWORD_FILE=$sasl_dir/password
  METERSTREAM_KAFKA_CA_FILE=$sasl_dir/ca.pem
REPORT
}
# ---- end of SASL_SSL -----------------------------------------------------------------------

# ---------------------------------------------------------------------------------------
# Local cluster: N KRaft nodes on this machine, each broker + controller, all N voters of
# the controller quorum (3 survive the loss of one), formatted with one cluster id.
#
#   deploy/kafka.sh start --brokers N ...   starts every node; returns once each answers
#                                           metadata requests and sees all N brokers
#   deploy/kafka.sh start --node K ...      starts node K again (after a kill)
#   deploy/kafka.sh kill --node K ...       SIGKILL of node K, for fault tests
#   deploy/kafka.sh stop [--node K] ...     SIGTERM, every node (or node K)
#   deploy/kafka.sh status ...              every node; 0 when all answer, 3 when none
#                                           runs, 4 otherwise
#
# Node K (1..N) listens on PORT + 2(K-1) and on CONTROLLER-PORT + 2(K-1), so the default
# 9092/9093 give brokers 9092, 9094, 9096 and controllers 9093, 9095, 9097. It keeps its
# data, log, pid and properties in DIR/node-K; the jars in DIR/libs are shared. DIR/cluster
# holds N, so that later commands (stop, status, a start without --brokers) cover the
# whole cluster. Each node gets a heap of 384m unless --heap says otherwise.
#
# With --sasl-ssl every node's client listener and the brokers among themselves speak
# SASL_SSL with SCRAM-SHA-512 (the single broker's block above, with the CA, certificate and
# user of DIR/sasl shared by all nodes); the controller quorum stays PLAINTEXT on loopback.
# DIR/cluster.sasl-ssl records it: the mode, like the size, is the cluster's for good, and
# stop and status need not be told.
cluster_file="$home/cluster" cluster_id_file="$home/cluster.id" cluster_sasl_file="$home/cluster.sasl-ssl"
base_port=$port base_controller_port=$controller_port

cluster_wanted() {
  { [ -n "$brokers" ] && [ "$brokers" != 1 ]; } || [ -n "$node" ] \
    || [ "$command" = kill ] || [ -f "$cluster_file" ]
}

# Selects node $1: sets the variables the single-broker functions work on
# (running_pid, answers_metadata, write_properties).
cluster_node() {
  port=$((base_port + 2 * ($1 - 1)))
  controller_port=$((base_controller_port + 2 * ($1 - 1)))
  data="$home/node-$1/data" pidfile="$home/node-$1/kafka.pid"
  logfile="$home/node-$1/kafka.log" props="$home/node-$1/server.properties"
}

cluster_bootstrap() {
  local k list=""
  for k in $(seq 1 "$size"); do list+="${list:+,}127.0.0.1:$((base_port + 2 * (k - 1)))"; done
  echo "$list"
}

# The single broker's properties with this node's identity and the cluster's replication
# appended: a later key wins in a Java properties file.
cluster_properties() {
  local k=$1 voters="" i rf=$((size < 3 ? size : 3)) isr=$((size < 2 ? size : 2))
  for i in $(seq 1 "$size"); do
    voters+="${voters:+,}$i@127.0.0.1:$((base_controller_port + 2 * (i - 1)))"
  done
  write_properties
  sasl_ssl_properties
  cat >> "$props" <<PROPS
# Node $k of a local cluster of $size (deploy/kafka.sh --brokers); overrides the above.
node.id=$k
controller.quorum.voters=$voters
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
default.replication.factor=$rf
min.insync.replicas=$isr
# Fewer threads: several nodes share this machine's cores with the pipeline.
num.network.threads=2
num.io.threads=2
background.threads=2
PROPS
}

cluster_java() {
  local node_heap=$heap
  [ -n "$heap_given" ] || node_heap=384m
  cluster_cmd=("${java_cmd[@]/#-Xms*/-Xms128m}")
  # One GC thread each, and the quick compiler only: three JVMs share a few cores with
  # the pipeline, and the optimising compiler's start-up work slowed a node's restart.
  cluster_cmd=("${cluster_cmd[@]/#-Xmx*/-Xmx$node_heap}" -XX:ParallelGCThreads=1
    -XX:ConcGCThreads=1 -XX:TieredStopAtLevel=1)
}

# Writes node $1's properties and formats its storage once (run for all nodes at once:
# each format is a JVM start).
cluster_prepare() {
  cluster_node "$1"
  mkdir -p "$data"  # and the node's directory
  cluster_properties "$1"
  sasl_ssl_format_args=()
  [ -z "$sasl_ssl" ] || sasl_ssl_user "$home/node-$1/user-formatted"
  if [ ! -f "$data/meta.properties" ]; then
    "${cluster_cmd[@]}" kafka.tools.StorageTool format --ignore-formatted \
      -t "$(cat "$cluster_id_file")" -c "$props" \
      ${sasl_ssl_format_args[@]+"${sasl_ssl_format_args[@]}"} >> "$logfile" 2>&1 \
      || die "formatting node $1's storage failed; see $logfile"
  fi
}

cluster_launch() {
  local k=$1 pid
  cluster_node "$k"
  if pid=$(running_pid); then
    echo "kafka: node $k already running (pid $pid) on 127.0.0.1:$port" >&2
    return
  fi
  echo "kafka: starting node $k on 127.0.0.1:$port (controller $controller_port), log $logfile" >&2
  # Where this run's lines begin: the SASL_SSL readiness check reads only those.
  stat -c %s "$logfile" 2>/dev/null > "$home/node-$k/log-offset" || echo 0 > "$home/node-$k/log-offset"
  setsid "${cluster_cmd[@]}" kafka.Kafka "$props" >> "$logfile" 2>&1 < /dev/null &
  echo "$!" > "$pidfile"
}

# The number of brokers the metadata answer of the node on port $1 lists (the request of
# answers_metadata); empty when it does not answer.
cluster_brokers_seen() {
  local reply
  reply=$(timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "\x00\x00\x00\x17\x00\x03\x00\x04\x00\x00\x00\x07\x00\x08ms-probe\xff\xff\xff\xff\x00" >&3
    head -c 16 <&3 | od -An -tx1 | tr -d " \n"
  ' _ "$port" 2>/dev/null) || return 0
  [ ${#reply} -eq 32 ] && [ "${reply:8:8}" = "00000007" ] && echo $((16#${reply:24:8}))
}

# Node $1 (selected) serves clients. In clear: its metadata answer lists all $size brokers.
# Over SASL_SSL a metadata request needs a login first, so: its listener answers ApiVersions
# over TLS, and its log of this run says the broker STARTED, which a KRaft broker reaches
# only once the controllers have registered and unfenced it; with every node there, each
# one is registered and the replication factor of 3 can be met.
cluster_node_ready() {
  if [ -z "$sasl_ssl" ]; then
    [ "$(cluster_brokers_seen "$port")" = "$size" ]
    return
  fi
  local offset
  offset=$(cat "$home/node-$1/log-offset" 2>/dev/null || echo 0)
  tail -c +"$((offset + 1))" "$logfile" 2>/dev/null | grep -q 'Transition from STARTING to STARTED' \
    && answers_api_versions_tls
}

# Waits until each node given answers and sees all $size brokers (180 s unless
# --ready-timeout says otherwise: N JVMs start at once on a machine the size of one).
cluster_wait() {
  [ -n "$ready_given" ] || ready_timeout=180
  local deadline=$((SECONDS + ready_timeout)) k pid
  for k in "$@"; do
    cluster_node "$k"
    until cluster_node_ready "$k"; do
      if ! pid=$(running_pid); then
        rm -f "$pidfile"
        echo "kafka: node $k exited during start; last lines of $logfile:" >&2
        tail -n 30 "$logfile" >&2
        exit 1
      fi
      [ $SECONDS -lt $deadline ] || die "node $k did not see the $size brokers within ${ready_timeout}s; see $logfile"
      sleep 0.2
    done
  done
}

cluster_start() {
  local k nodes
  if (( (base_controller_port - base_port) % 2 == 0
        && (base_controller_port - base_port) * (base_controller_port - base_port) < 4 * size * size )); then
    die "broker ports $base_port+2k and controller ports $base_controller_port+2k overlap for $size nodes: choose a controller port (METERSTREAM_KAFKA_CONTROLLER_PORT) of the other parity than the broker port, or further away"
  fi
  if running_pid > /dev/null; then die "the single broker of $home runs; stop it first"; fi
  require_java
  resolve_jars
  if [ -n "$sasl_ssl" ]; then
    sasl_ssl_material
    touch "$cluster_sasl_file"
  fi
  echo "$size" > "$cluster_file"
  if [ ! -f "$cluster_id_file" ]; then
    # As format_storage draws it: 16 random bytes, base64url, not starting with '-'.
    local cluster_id=-
    while [[ $cluster_id == -* ]]; do
      cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    done
    echo "$cluster_id" > "$cluster_id_file"
  fi
  cluster_java
  nodes=${node:-$(seq 1 "$size")}
  local preparing=()
  for k in $nodes; do
    cluster_node "$k"
    if ! running_pid > /dev/null; then
      cluster_prepare "$k" &
      preparing+=("$!")
    fi
  done
  for k in "${preparing[@]}"; do wait "$k" || exit 1; done
  # All at once: a node answers only once a majority of the controllers is up.
  for k in $nodes; do cluster_launch "$k"; done
  cluster_wait $nodes
  echo "kafka: ready, cluster of $size on $(cluster_bootstrap) (set METERSTREAM_KAFKA to it)"
  sasl_bootstrap=$(cluster_bootstrap)
  sasl_ssl_report
}

cluster_stop() {
  local k pids=() signal=${1:-TERM} pid
  for k in ${node:-$(seq 1 "$size")}; do
    cluster_node "$k"
    if pid=$(running_pid); then
      kill "-$signal" "$pid"
      pids+=("$pid")
    fi
  done
  local deadline=$((SECONDS + 60))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do
      if [ $SECONDS -ge $deadline ]; then
        echo "kafka: pid $pid did not stop within 60s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.1
    done
  done
  for k in ${node:-$(seq 1 "$size")}; do rm -f "$home/node-$k/kafka.pid"; done
  if [ "$signal" = KILL ]; then echo "kafka: killed node $node"; else echo "kafka: stopped"; fi
}

cluster_status() {
  local k pid answering=0 running=0
  for k in $(seq 1 "$size"); do
    cluster_node "$k"
    if ! pid=$(running_pid); then
      echo "kafka: node $k not running (127.0.0.1:$port)"
    elif answers_metadata; then
      echo "kafka: node $k running (pid $pid) on 127.0.0.1:$port, answering metadata requests"
      running=$((running + 1)) answering=$((answering + 1))
    else
      echo "kafka: node $k process $pid is up but not answering on 127.0.0.1:$port"
      running=$((running + 1))
    fi
  done
  [ "$answering" -eq "$size" ] && return
  [ "$running" -eq 0 ] && exit 3
  exit 4
}

cluster_main() {
  local recorded=""
  [ -f "$cluster_file" ] && recorded=$(cat "$cluster_file")
  if [ -n "$recorded" ] && [ -n "$brokers" ] && [ "$brokers" != "$recorded" ]; then
    die "$home holds a cluster of $recorded brokers, not $brokers: stop it and remove $home/node-* and $cluster_file to make another"
  fi
  size=${recorded:-$brokers}
  [ -n "$size" ] || die "no cluster in $home (start one with --brokers N)"
  [[ $size =~ ^[0-9]+$ ]] && [ "$size" -ge 2 ] && [ "$size" -le 9 ] \
    || die "--brokers must be from 2 to 9 for a cluster (1: the single broker), got $size"
  if [ -n "$node" ] && ! { [ "$node" -ge 1 ] 2>/dev/null && [ "$node" -le "$size" ]; }; then
    die "--node must be from 1 to $size, got $node"
  fi
  if [ -f "$cluster_sasl_file" ]; then
    [ -n "$sasl_ssl" ] || [ "$command" != start ] \
      || die "the cluster in $home was made with SASL_SSL: start it with --sasl-ssl"
    sasl_ssl=1
    answers_metadata() { answers_api_versions_tls; }
  elif [ -n "$sasl_ssl" ] && [ -n "$recorded" ]; then
    die "the cluster in $home was made without SASL_SSL: stop it and remove $home/node-* and $cluster_file to make one with it"
  fi
  case "$command" in
    start) cluster_start ;;
    stop) cluster_stop TERM ;;
    kill) [ -n "$node" ] || die "kill needs --node K"; cluster_stop KILL ;;
    status) cluster_status ;;
    *) usage ;;
  esac
}

if cluster_wanted; then
  cluster_main
  exit 0
fi
# --- end of the local cluster

case "$command" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) usage ;;
esac
