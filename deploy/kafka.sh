#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft, combined broker + controller) on
# 127.0.0.1, run from the broker jars on Maven Central. No Docker needed.
#
#   deploy/kafka.sh start|stop|status --home DIR --port N --controller-port N [--heap SIZE]
#
# `meterstream kafka start|stop|status` calls this with values from the
# project's configuration (meterstream/core/config.py holds the defaults).
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
usage() { die "usage: deploy/kafka.sh start|stop|status --home DIR --port N --controller-port N [--heap SIZE]"; }

[ $# -ge 1 ] || usage
command=$1; shift
home="" port="" controller_port="" heap="1g" ready_timeout=90
while [ $# -gt 0 ]; do
  case "$1" in
    --home) home=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --controller-port) controller_port=$2; shift 2 ;;
    --heap) heap=$2; shift 2 ;;
    --ready-timeout) ready_timeout=$2; shift 2 ;;
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
  "${java_cmd[@]}" kafka.tools.StorageTool format --ignore-formatted -t "$cluster_id" -c "$props" >> "$logfile" 2>&1 \
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
  if pid=$(running_pid); then
    if answers_metadata; then
      echo "kafka: already running (pid $pid) on 127.0.0.1:$port"
      return
    fi
  else
    resolve_jars
    mkdir -p "$data"
    write_properties
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

case "$command" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) usage ;;
esac
