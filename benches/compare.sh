#!/usr/bin/env bash
# Flotilla side by side with etcd (and a durable Redis) on this machine, in one run:
# a 3-member etcd and a 3-node Flotilla cluster on 127.0.0.x (fsync on, fresh data dirs), one
# redis-server with appendfsync always, the same flotilla-bench workloads against each, then
# one side-by-side table with ratios. Everything it starts is stopped on exit.
#
# Usage: benches/compare.sh            (from anywhere; builds release binaries first)
# Knobs (environment): DURATION=10s WARMUP=2s KEYS=10000 RANGES=64 REDIS=1 (0: skip Redis)
# IO_THREADS= (each node's --io-threads; empty: the node's default, 0 on a 2-core box —
# one thread per node for network and Raft; etcd runs with its defaults)
#                      OUT=target/bench-compare (JSON per comparison, compare.svg, server logs)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
KEYS=${KEYS:-10000}
RANGES=${RANGES:-64}
IO_THREADS=${IO_THREADS:-}
REDIS=${REDIS:-1}
OUT=${OUT:-$ROOT/target/bench-compare}
# Ports: Flotilla on 127.0.0.{1,2,3}; etcd members (E_CLIENT+i, E_PEER+i) and Redis on 127.0.0.1.
F_LISTEN=${F_LISTEN:-7500} F_RESP=${F_RESP:-6500} F_HTTP=${F_HTTP:-8500}
E_CLIENT=${E_CLIENT:-23790} E_PEER=${E_PEER:-23800}
R_PORT=${R_PORT:-6501}

log() { printf '\n== %s\n' "$*" >&2; }

# --- 1. tools ----------------------------------------------------------------------------------
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if [ "$REDIS" = 1 ] && ! command -v redis-server >/dev/null; then missing+=(redis-server); fi
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- 2. build ----------------------------------------------------------------------------------
log "building release binaries"
cargo build --release --bin flotilla
cargo build --release -p flotilla-bench --features etcd
FLOTILLA=$ROOT/target/release/flotilla
BENCH=$ROOT/target/release/flotilla-bench

# --- 3. start everything -----------------------------------------------------------------------
mkdir -p "$OUT"
D=$(mktemp -d /tmp/flotilla-compare.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting a 3-member etcd ($(etcd --version | head -1)) on 127.0.0.1:$((E_CLIENT + 1))-$((E_CLIENT + 3))"
cluster=""
for i in 1 2 3; do cluster+="${cluster:+,}e$i=http://127.0.0.1:$((E_PEER + i))"; done
e_pids=()
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$D/etcd$i" \
    --listen-client-urls "http://127.0.0.1:$((E_CLIENT + i))" --advertise-client-urls "http://127.0.0.1:$((E_CLIENT + i))" \
    --listen-peer-urls "http://127.0.0.1:$((E_PEER + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((E_PEER + i))" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token flotilla-compare \
    >"$OUT/etcd$i.log" 2>&1 &
  pids+=($!); e_pids+=($!)
done

log "starting a 3-node Flotilla cluster ($RANGES ranges) on 127.0.0.{1,2,3}:$F_LISTEN"
join="127.0.0.1:$F_LISTEN,127.0.0.2:$F_LISTEN,127.0.0.3:$F_LISTEN"
f_pids=()
for i in 1 2 3; do
  "$FLOTILLA" start --id "$i" --data-dir "$D/flotilla$i" --listen "127.0.0.$i:$F_LISTEN" \
    --resp "127.0.0.$i:$F_RESP" --http "127.0.0.$i:$F_HTTP" --join "$join" --insecure \
    --initial-ranges "$RANGES" ${IO_THREADS:+--io-threads "$IO_THREADS"} >"$OUT/flotilla$i.log" 2>&1 &
  pids+=($!); f_pids+=($!)
done

r_pids=()
if [ "$REDIS" = 1 ]; then
  log "starting redis-server ($(redis-server --version | awk '{print $3}')) with appendfsync always on 127.0.0.1:$R_PORT"
  mkdir -p "$D/redis"
  redis-server --port "$R_PORT" --bind 127.0.0.1 --dir "$D/redis" --appendonly yes --appendfsync always \
    --save '' --daemonize no >"$OUT/redis.log" 2>&1 &
  pids+=($!); r_pids+=($!)
fi

wait_for() { # description, command...
  local what=$1; shift
  for _ in $(seq 120); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "timed out waiting for $what; logs in $OUT" >&2
  exit 1
}
etcd_healthy() { for i in 1 2 3; do curl -sf "http://127.0.0.1:$((E_CLIENT + i))/health" | grep -q '"health":"true"' || return 1; done; }
flotilla_led() { # every range has a leader on every node
  for i in 1 2 3; do
    s=$(curl -sf "http://127.0.0.$i:$F_HTTP/status") || return 1
    echo "$s" | grep -q '"ranges":\[{' || return 1
    if echo "$s" | grep -q '"leader":null'; then return 1; fi
  done
}
redis_up() { redis-cli -p "$R_PORT" PING | grep -q PONG; }
wait_for "etcd" etcd_healthy
wait_for "flotilla" flotilla_led
if [ "$REDIS" = 1 ]; then wait_for "redis" redis_up; fi
all_alive() { # a server that died makes every later figure meaningless: stop and say which
  for p in "${pids[@]}"; do
    if ! kill -0 "$p" 2>/dev/null; then
      echo "server process $p is gone ($1); logs in $OUT" >&2
      exit 1
    fi
  done
}
all_alive "during startup"

F_PIDS=$(IFS=,; echo "${f_pids[*]}")
E_PIDS=$(IFS=,; echo "${e_pids[*]}")
FLOTILLA_URL="flotilla=flotilla://127.0.0.1:$F_LISTEN,127.0.0.2:$F_LISTEN,127.0.0.3:$F_LISTEN"
ETCD_URL="etcd=etcd://127.0.0.1:$((E_CLIENT + 1)),127.0.0.1:$((E_CLIENT + 2)),127.0.0.1:$((E_CLIENT + 3))"
RESP_URL="flotilla-resp=resp://127.0.0.1:$F_RESP,127.0.0.2:$F_RESP,127.0.0.3:$F_RESP"

# --- 4. the comparisons ------------------------------------------------------------------------
reports=()
compare() { # name, title, flotilla-bench args... (targets and pids included)
  local name=$1 title=$2; shift 2
  all_alive "before: $title"
  log "$title"
  "$BENCH" --duration "$DURATION" --warmup "$WARMUP" --keys "$KEYS" --value-size 256 \
    --title "$title" --json "$OUT/$name.json" "$@"
  reports+=("$OUT/$name.json")
}
# While one system is measured the others are stopped (SIGSTOP) and resumed after: an idle etcd
# beside Flotilla took ~2 % of the machine, and Flotilla's idle ranges as much from etcd.
R_PIDS=$(IFS=,; echo "${r_pids[*]:-}")
vs_etcd=(--compare "$FLOTILLA_URL,$ETCD_URL" --server-pids "$F_PIDS" --server-pids "$E_PIDS" --pause-others)
if [ -n "$R_PIDS" ]; then vs_etcd+=(--pause-pids "$R_PIDS"); fi
compare kv0-256 "kv0 (100% writes), 256 clients [target: flotilla >= 3x etcd ops/s]" \
  --workload kv0 --clients 256 "${vs_etcd[@]}"
compare kv0-1 "kv0 (100% writes), 1 client [target: flotilla p50 <= 1/2 etcd p50]" \
  --workload kv0 --clients 1 "${vs_etcd[@]}"
compare read-256 "linearizable reads (uniform), 256 clients [target: >= 3x etcd ops/s]" \
  --workload read --clients 256 "${vs_etcd[@]}"
compare ycsb-a-256 "YCSB-A (50/50 read/update, zipfian), 256 clients, $RANGES ranges [target: >= 3x etcd]" \
  --workload a --clients 256 "${vs_etcd[@]}"
compare ycsb-b-256 "YCSB-B (95/5 read/update, zipfian), 256 clients, $RANGES ranges [target: >= 3x etcd]" \
  --workload b --clients 256 "${vs_etcd[@]}"
if [ "$REDIS" = 1 ]; then
  compare resp-set-50 "RESP SET (kv0), 50 clients: Flotilla's gateway vs redis appendfsync always [target: >= 0.8x]" \
    --workload kv0 --clients 50 --compare "$RESP_URL,redis=resp://127.0.0.1:$R_PORT" \
    --server-pids "$F_PIDS" --server-pids "${r_pids[0]}" --pause-others --pause-pids "$E_PIDS"
fi

all_alive "after the last comparison"

# --- 5. side by side ---------------------------------------------------------------------------
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- 2>/dev/null || rev="$rev+uncommitted changes"
log "side by side (Flotilla $rev; 3 nodes vs 3 etcd members on $(nproc) cores, fsync on, 256-byte values, $DURATION each)"
"$BENCH" --summarize "${reports[@]}" --svg "$OUT/compare.svg"
echo
echo "Reports: $OUT/*.json, $OUT/compare.svg; server logs: $OUT/*.log"
