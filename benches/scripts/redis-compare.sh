#!/usr/bin/env bash
# redis-benchmark against a 3-node Flotilla cluster (127.0.0.1-3, fsync on, 3-way replication)
# and, in the same run, against one redis-server with appendonly yes + appendfsync always.
# Usage: benches/scripts/redis-compare.sh [-c CLIENTS] [-n REQUESTS]
# Needs: cargo build --release; apt-get install -y redis-server redis-tools
set -euo pipefail
BIN=${BIN:-target/release/flotilla}
CLIENTS=50; REQUESTS=100000
while getopts "c:n:" o; do case $o in c) CLIENTS=$OPTARG;; n) REQUESTS=$OPTARG;; *) exit 2;; esac; done
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build --release first)"; exit 2; }
command -v redis-benchmark >/dev/null && command -v redis-server >/dev/null \
  || { echo "needs redis-server and redis-benchmark: apt-get install -y redis-server redis-tools"; exit 2; }
D=$(mktemp -d); pids=()
cleanup() { kill -9 "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT

bench() { # addr port -> "set_rps get_rps"
  redis-benchmark -h "$1" -p "$2" -t set,get -c "$CLIENTS" -n "$REQUESTS" -r 100000 -d 16 -q 2>/dev/null \
    | tr '\r' '\n' | awk '/^SET:/ {s=$2} /^GET:/ {g=$2} END {print s, g}'
}

# Flotilla: 3 nodes, default ranges.
for i in 1 2 3; do
  "$BIN" start --id $i --data-dir "$D/n$i" --listen 127.0.0.$i:7100 --resp 127.0.0.$i:6390 \
    --http 127.0.0.$i:8190 --join 127.0.0.1:7100,127.0.0.2:7100,127.0.0.3:7100 --insecure \
    --initial-ranges "${RANGES:-4}" >"$D/n$i.log" 2>&1 &
  pids+=($!); disown $! 2>/dev/null || true
done
for _ in $(seq 60); do [ "$(redis-cli -h 127.0.0.1 -p 6390 SET warm up 2>/dev/null)" = OK ] && break; sleep 1; done
read -r f_set f_get < <(bench 127.0.0.1 6390)
kill -9 "${pids[@]}"; wait 2>/dev/null || true; pids=()

# Redis: one durable server.
mkdir -p "$D/redis"
redis-server --port 6391 --bind 127.0.0.1 --dir "$D/redis" --appendonly yes --appendfsync always \
  --save '' --daemonize no >"$D/redis.log" 2>&1 &
pids+=($!); disown $! 2>/dev/null || true
for _ in $(seq 30); do redis-cli -p 6391 PING >/dev/null 2>&1 && break; sleep 0.2; done
read -r r_set r_get < <(bench 127.0.0.1 6391)

printf "%-44s %12s %12s\n" "target (c=$CLIENTS, n=$REQUESTS, 16-byte values)" "SET ops/s" "GET ops/s"
printf "%-44s %12s %12s\n" "flotilla, 3 nodes, 3-way replication, fsync" "$f_set" "$f_get"
printf "%-44s %12s %12s\n" "redis-server, appendfsync always" "$r_set" "$r_get"
python3 -c "print(f'ratio flotilla/redis: SET {float(\"$f_set\")/float(\"$r_set\"):.2f}  GET {float(\"$f_get\")/float(\"$r_get\"):.2f}')"
