#!/usr/bin/env bash
# Measures what idle ranges cost: peer batches per second (from /metrics) and node CPU after
# quiescence, for a 3-node cluster on 127.0.0.1-3 with R ranges.
# Usage: benches/scripts/idle-ranges.sh [RANGES...]     (default: 1 1000 10000)
# Needs a release build: cargo build --release
set -euo pipefail
BIN=${BIN:-target/release/flotilla}
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build --release first)"; exit 2; }
QUIESCE=${QUIESCE:-1}  # QUIESCE=0 keeps every group ticking and heartbeating
SETTLE=${SETTLE:-20}   # seconds to let elections finish and groups quiesce
WINDOW=${WINDOW:-20}   # seconds measured
CLK=$(getconf CLK_TCK)
ranges_list=("$@"); [ ${#ranges_list[@]} -gt 0 ] || ranges_list=(1 1000 10000)

metric() { # sum of a Prometheus counter on one node
  curl -s "http://127.0.0.$1:8080/metrics" | awk -v m="$2" '$1 ~ "^"m"({|$)" {s += $2} END {printf "%d\n", s}'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

printf "%-8s %-14s %-14s %-12s %-12s %-10s\n" ranges batches/s/node heartbeats/s quiesced cpu%/node rss_MiB
for R in "${ranges_list[@]}"; do
  D=$(mktemp -d); pids=(); extra=()
  if [ "$QUIESCE" = 0 ]; then echo "quiesce = false" > "$D/node.toml"; extra=(--config "$D/node.toml"); fi
  for i in 1 2 3; do
    "$BIN" start --id $i --data-dir "$D/n$i" --listen 127.0.0.$i:7000 --resp 127.0.0.$i:6379 \
      --http 127.0.0.$i:8080 --join 127.0.0.1:7000,127.0.0.2:7000,127.0.0.3:7000 --insecure \
      --initial-ranges "$R" "${extra[@]}" >"$D/n$i.log" 2>&1 &
    pids+=($!); disown $! 2>/dev/null || true
  done
  trap 'kill -9 "${pids[@]}" 2>/dev/null; rm -rf "$D"' EXIT
  sleep "$SETTLE"
  b0=$(metric 1 flotilla_peer_batches_sent_total); h0=$(metric 1 flotilla_raft_heartbeats_sent_total)
  c0=0; for p in "${pids[@]}"; do c0=$((c0 + $(cpu_ticks "$p"))); done
  sleep "$WINDOW"
  b1=$(metric 1 flotilla_peer_batches_sent_total); h1=$(metric 1 flotilla_raft_heartbeats_sent_total)
  c1=0; for p in "${pids[@]}"; do c1=$((c1 + $(cpu_ticks "$p"))); done
  q=$(curl -s http://127.0.0.1:8080/status | python3 -c 'import json,sys; r=json.load(sys.stdin)["ranges"]; print(str(sum(x["quiesced"] for x in r))+"/"+str(len(r)))')
  rss=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/${pids[0]}/status")
  cpu=$(python3 -c "print(f'{100*($c1-$c0)/$CLK/$WINDOW/3:.2f}')")
  printf "%-8s %-14s %-14s %-12s %-12s %-10s\n" "$R" "$(( (b1-b0)/WINDOW ))" "$(( (h1-h0)/WINDOW ))" "$q" "$cpu" "$rss"
  kill -9 "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null || true; rm -rf "$D"; trap - EXIT
done
