#!/usr/bin/env bash
# Side-by-side A/B of two ferryd binaries on this machine, alternating OLD and NEW ROUNDS times so that the
# machine's noise falls on both. The client (`ferry`) is the same for both: NEW's directory's `ferry`.
#
#   r1: one broker. 2M x 100 B publishes (msg/s, broker CPU per message), 400k x 1 KiB publishes (MiB/s,
#       broker CPU per message, user and system apart: the kernel's share swings with this VM's memory),
#       the 2M messages consumed by `ferry consume` to /dev/null (msg/s), 3000 synchronous 100 B publishes
#       (latency p50/p99).
#   r3: three brokers, one partition at replication factor 3. 1M x 100 B publishes (msg/s, CPU of the three
#       brokers per message), 200k x 1 KiB publishes (MiB/s).
#
# Usage: benches/scripts/ab.sh OLD_FERRYD NEW_FERRYD [ROUNDS] [r1|r3]   (run from the repository root)
# e.g.   git worktree add /tmp/old <commit> && (cd /tmp/old && cargo build --release -p ferry-broker)
#        cargo build --release -p ferry-broker -p ferry-cli
#        benches/scripts/ab.sh /tmp/old/target/release/ferryd target/release/ferryd 3 r1
set -euo pipefail
OLD=${1:?old ferryd}
NEW=${2:?new ferryd}
ROUNDS=${3:-3}
MODE=${4:-r1}
FERRY=$(dirname "$NEW")/ferry
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
HZ=$(getconf CLK_TCK)
cpu() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' /proc/"$p"/stat))); done; echo $t; }
# utime,stime of one process (clock ticks).
cpu_split() { awk '{print $14 "," $15}' /proc/"$1"/stat; }
wait_ready() { # a deadline, not a guess: the cluster answers and every partition has a leader
  for _ in $(seq 150); do
    if "$FERRY" cluster status -o json 2>/dev/null | python3 -c \
      'import json,sys; sys.exit(0 if json.load(sys.stdin)["leaderless_partitions"] == 0 else 1)' 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  echo "cluster did not become ready in 30 s" >&2
  exit 1
}

run_r1() {
  local name=$1 bin=$2 dir=$WORK/$1
  rm -rf "$dir"; mkdir -p "$dir"
  local base=$((20000 + RANDOM % 20000))
  "$bin" --data-dir "$dir/d" --listen 127.0.0.1:$base --http-listen 127.0.0.1:$((base + 1)) \
    --peer-listen 127.0.0.1:$((base + 2)) --log warn >"$dir/log" 2>&1 &
  local pid=$!
  export FERRY_BOOTSTRAP=127.0.0.1:$base
  wait_ready
  "$FERRY" topic create b1 --partitions 1 >/dev/null
  "$FERRY" topic create k1 --partitions 1 >/dev/null
  wait_ready
  local c0 c1 k0 k1 p100 p1k t0 t1 sync
  c0=$(cpu $pid)
  p100=$("$FERRY" bench produce --topic b1 --messages 2000000 --size 100 -o json)
  c1=$(cpu $pid)
  k0=$(cpu_split $pid)
  p1k=$("$FERRY" bench produce --topic k1 --messages 400000 --size 1024 -o json)
  k1=$(cpu_split $pid)
  t0=$(date +%s.%N)
  "$FERRY" consume b1 --from beginning --exit-at-end >/dev/null
  t1=$(date +%s.%N)
  sync=$("$FERRY" bench produce --topic k1 --messages 3000 --size 100 --sync --linger-ms 0 -o json)
  kill $pid; wait $pid 2>/dev/null || true
  python3 - "$name" "$p100" "$p1k" "$t0" "$t1" "$c0" "$c1" "$sync" "$HZ" "$k0" "$k1" <<'PY'
import json, sys
n, p100, p1k, t0, t1, c0, c1, sync, hz, k0, k1 = sys.argv[1:]
p100, p1k, sync = json.loads(p100), json.loads(p1k), json.loads(sync)
cpu_us = (float(c1) - float(c0)) / float(hz) / p100['messages'] * 1e6
(u0, s0), (u1, s1) = ([int(x) for x in k.split(",")] for k in (k0, k1))
per_k = lambda ticks: ticks / float(hz) / p1k['messages'] * 1e6
print(f"{n}: 100B {p100['messages_per_sec']/1e3:.0f}k msg/s cpu/msg {cpu_us:.2f}us"
      f" | 1KiB {p1k['mb_per_sec']:.0f} MiB/s cpu/msg user {per_k(u1 - u0):.2f} system {per_k(s1 - s0):.2f}us"
      f" | consume {2e6/(float(t1)-float(t0))/1e6:.2f}M msg/s"
      f" | sync p50 {sync['latency_ms']['p50']:.2f} p99 {sync['latency_ms']['p99']:.2f} ms")
PY
}

run_r3() {
  local name=$1 bin=$2 dir=$WORK/$1
  rm -rf "$dir"; mkdir -p "$dir"
  local base=$((20000 + RANDOM % 20000))
  local peers="1=127.0.0.1:$((base + 1)),2=127.0.0.1:$((base + 2)),3=127.0.0.1:$((base + 3))"
  local pids=()
  for i in 1 2 3; do
    "$bin" --data-dir "$dir/d$i" --node-id $i --listen 127.0.0.1:$((base + 10 + i)) \
      --http-listen 127.0.0.1:$((base + 20 + i)) --peer-listen 127.0.0.1:$((base + i)) --peers "$peers" \
      --log warn >"$dir/log$i" 2>&1 &
    pids+=($!)
  done
  export FERRY_BOOTSTRAP=127.0.0.1:$((base + 11)),127.0.0.1:$((base + 12)),127.0.0.1:$((base + 13))
  wait_ready
  "$FERRY" topic create r3 --partitions 1 --replicas 3 >/dev/null
  wait_ready
  local c0 c1 r k
  c0=$(cpu "${pids[@]}")
  r=$("$FERRY" bench produce --topic r3 --messages 1000000 --size 100 -o json)
  c1=$(cpu "${pids[@]}")
  k=$("$FERRY" bench produce --topic r3 --messages 200000 --size 1024 -o json)
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
  python3 - "$name" "$r" "$k" "$c0" "$c1" "$HZ" <<'PY'
import json, sys
n, r, k, c0, c1, hz = sys.argv[1:]
r, k = json.loads(r), json.loads(k)
cpu_us = (float(c1) - float(c0)) / float(hz) / 1e6 * 1e6
print(f"{n}: R3 100B {r['messages_per_sec']/1e3:.0f}k msg/s, {cpu_us:.2f} us cpu/msg (3 brokers)"
      f" | R3 1KiB {k['mb_per_sec']:.0f} MiB/s")
PY
}

for _ in $(seq "$ROUNDS"); do
  "run_$MODE" old "$OLD"
  "run_$MODE" new "$NEW"
done
