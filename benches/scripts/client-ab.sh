#!/bin/bash
# A/B of two `ferry` CLI builds (the client: producer, batching, the bench's generator) against the same
# release broker(s), alternating A and B ROUNDS times so the machine's noise falls on both. Each run publishes
# to a fresh topic (one partition) with `ferry bench produce`; prints msg/s, MB/s and the brokers' CPU per
# message (utime + stime of every ferryd, /proc/<pid>/stat) and the client's (of the `ferry` process, from
# /usr/bin/time).
# usage: benches/scripts/client-ab.sh FERRY_A FERRY_B [ROUNDS (3)] [MESSAGES (2000000)] [SIZE (100)] [r1|r3 (r1)]
#        (run from the repository root; the brokers are target/release/ferryd)
set -u
A=$1; B=$2; ROUNDS=${3:-3}; N=${4:-2000000}; SIZE=${5:-100}; MODE=${6:-r1}
BIN=target/release
W=$(mktemp -d /tmp/clientabXXXX)
n=1; [ "$MODE" = r3 ] && n=3
peers=""; for i in $(seq 1 $n); do peers="$peers,$i=127.0.0.1:$((17400+i))"; done; peers=${peers#,}
pids=()
for i in $(seq 1 $n); do
  args=(--data-dir $W/d$i --node-id $i --listen 127.0.0.1:$((17410+i)) --http-listen 127.0.0.1:$((17420+i))
        --peer-listen 127.0.0.1:$((17400+i)) --log warn)
  [ $n -gt 1 ] && args+=(--peers $peers)
  $BIN/ferryd "${args[@]}" > $W/log$i 2>&1 &
  pids+=($!)
done
trap 'kill ${pids[@]} 2>/dev/null; wait 2>/dev/null; rm -rf $W' EXIT
for i in $(seq 1 $n); do for t in $(seq 1 200); do curl -sf 127.0.0.1:$((17420+i))/readyz >/dev/null && break; sleep 0.1; done; done
cpu() { local t=0 p f; for p in ${pids[@]}; do f=($(cut -d')' -f2 /proc/$p/stat)); t=$((t+f[11]+f[12])); done; echo $t; }
# The brokers remove a deleted topic's data in the background: wait for it (unlinking hundreds of MB costs
# them CPU that would otherwise fall on the next run, always the same side's; docs/benchmarks.md, session 17),
# then start the next run from the same page cache (when root). As in inflight-ab.sh.
settle() {
  for k in $(seq 1 300); do [ -z "$(ls -A $W/d*/topics 2>/dev/null)" ] && break; sleep 0.1; done
  sync; [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches
}
# A warm-up run on a topic of its own, not counted: the first run on fresh brokers was slower, and it was
# always A's.
$A --bootstrap 127.0.0.1:17411 topic create warmup --partitions 1 --replicas $n >/dev/null
$A --bootstrap 127.0.0.1:17411 bench produce --topic warmup --messages $((N / 5)) --size $SIZE -o json >/dev/null
$A --bootstrap 127.0.0.1:17411 topic delete warmup >/dev/null
settle
for r in $(seq 1 $ROUNDS); do
  for c in $A $B; do
    t=ab$r$RANDOM
    $c --bootstrap 127.0.0.1:17411 topic create $t --partitions 1 --replicas $n >/dev/null
    c0=$(cpu)
    out=$(/usr/bin/time -o $W/time -f '%U %S' $c --bootstrap 127.0.0.1:17411 bench produce --topic $t \
      --messages $N --size $SIZE -o json)
    c1=$(cpu)
    python3 - "$c" "$c0" "$c1" "$N" "$out" "$(cat $W/time)" <<'PY'
import json, sys
label, c0, c1, n, out, client = sys.argv[1:]
o = json.loads(out)
us = (int(c1) - int(c0)) * 10**6 / 100 / int(n)  # clock ticks are 1/100 s
client_us = sum(float(x) for x in client.split()) * 10**6 / int(n)
print(f"{label}: {o['messages_per_sec']:,.0f} msg/s, {o['mb_per_sec']:.0f} MB/s, {us:.2f} us broker CPU/msg, "
      f"{client_us:.2f} us client CPU/msg")
PY
    $c --bootstrap 127.0.0.1:17411 topic delete $t >/dev/null
    settle
  done
done
