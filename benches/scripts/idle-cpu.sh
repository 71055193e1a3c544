#!/usr/bin/env bash
# Idle cost of many Raft groups: three ferryd on 127.0.0.1, one topic of PARTITIONS partitions at replication
# factor 3, nothing published. Prints the CPU the three brokers use together, as % of one core, over
# SECONDS_MEASURED seconds after SETTLE seconds of settling.
# Usage: benches/scripts/idle-cpu.sh [PARTITIONS] [SECONDS_MEASURED]   (run from the repository root)
#        BIN=DIR measures the ferryd and ferry in DIR instead of building this tree (for before/after runs).
set -euo pipefail
PARTITIONS=${1:-1000}
MEASURE=${2:-30}
SETTLE=${SETTLE:-20}
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p ferry-broker -p ferry-cli
  BIN=target/release
fi
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
BASE=$((20000 + RANDOM % 20000))
P="1=127.0.0.1:$((BASE+1)),2=127.0.0.1:$((BASE+2)),3=127.0.0.1:$((BASE+3))"
PIDS=()
for i in 1 2 3; do
  "$BIN/ferryd" --node-id $i --data-dir "$WORK/d$i" --listen 127.0.0.1:$((BASE+10+i)) \
    --http-listen 127.0.0.1:$((BASE+20+i)) --peer-listen 127.0.0.1:$((BASE+i)) --peers "$P" \
    --log warn >"$WORK/n$i.log" 2>&1 &
  PIDS+=($!)
done
export FERRY_BOOTSTRAP=127.0.0.1:$((BASE+11)),127.0.0.1:$((BASE+12)),127.0.0.1:$((BASE+13))
for _ in $(seq 100); do "$BIN/ferry" cluster status >/dev/null 2>&1 && break; sleep 0.2; done
"$BIN/ferry" topic create idle --partitions "$PARTITIONS" --replicas 3 >/dev/null
sleep "$SETTLE"
ticks() { local t=0; for p in "${PIDS[@]}"; do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
HZ=$(getconf CLK_TCK)
t0=$(ticks); sleep "$MEASURE"; t1=$(ticks)
echo "idle: 3 brokers, $PARTITIONS partitions x 3 replicas: $(( (t1 - t0) * 1000 / HZ / MEASURE / 10 )).$(( (t1 - t0) * 1000 / HZ / MEASURE % 10 ))% of one core (all three brokers together, ${MEASURE}s)"
