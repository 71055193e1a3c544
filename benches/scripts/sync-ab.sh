#!/bin/bash
# A/B of one publish in flight (`ferry bench produce --sync --linger-ms 0`) against two broker builds. Both
# clusters run at once (A's on ports 174xx, B's on 175xx; one partition, on one broker or at RF 3 on three),
# and the runs alternate A, B, so the machine's noise falls on both and neither build has the machine to
# itself. Prints each run's acknowledgement p50 and p99.
# usage: benches/scripts/sync-ab.sh FERRYD_A FERRYD_B [ROUNDS (4)] [MESSAGES (3000)] [SIZE (100)] [r1|r3 (r1)]
#        (run from the repository root; the client is target/release/ferry)
set -u
A=$1; B=$2; ROUNDS=${3:-4}; N=${4:-3000}; SIZE=${5:-100}; MODE=${6:-r1}
FERRY=target/release/ferry
W=$(mktemp -d /tmp/syncabXXXX)
n=1; [ "$MODE" = r3 ] && n=3
pids=()
trap 'kill ${pids[@]} 2>/dev/null; wait 2>/dev/null; rm -rf $W' EXIT
start() { # BIN PORT_BASE (174 or 175)
  local bin=$1 base=$2 peers="" i
  for i in $(seq 1 $n); do peers="$peers,$i=127.0.0.1:${base}0$i"; done; peers=${peers#,}
  for i in $(seq 1 $n); do
    local args=(--data-dir $W/$base-$i --node-id $i --listen 127.0.0.1:${base}1$i
                --http-listen 127.0.0.1:${base}2$i --peer-listen 127.0.0.1:${base}0$i --log warn)
    [ $n -gt 1 ] && args+=(--peers $peers)
    $bin "${args[@]}" > $W/log$base-$i 2>&1 &
    pids+=($!)
  done
  for i in $(seq 1 $n); do
    for t in $(seq 1 200); do curl -sf 127.0.0.1:${base}2$i/readyz >/dev/null && break; sleep 0.1; done
  done
  $FERRY --bootstrap 127.0.0.1:${base}11 topic create s --partitions 1 --replicas $n >/dev/null
  # Warm-up, not counted.
  $FERRY --bootstrap 127.0.0.1:${base}11 bench produce --topic s --messages 500 --size $SIZE --sync \
    --linger-ms 0 -o json >/dev/null
}
start $A 174
start $B 175
for r in $(seq 1 $ROUNDS); do
  for side in A:174 B:175; do
    out=$($FERRY --bootstrap 127.0.0.1:${side#*:}11 bench produce --topic s --messages $N --size $SIZE --sync \
      --linger-ms 0 -o json)
    python3 - "${side%:*}" "$out" <<'PY'
import json, sys
o = json.loads(sys.argv[2]); l = o["latency_ms"]
print(f"{sys.argv[1]}: p50 {l['p50'] * 1000:.0f} us, p99 {l['p99'] * 1000:.0f} us, failed {o['failed']}")
PY
  done
done
