#!/bin/bash
# A/B of the producer's batches in flight per partition: `ferry bench produce --in-flight 1` against `--in-flight 5`
# with one build, alternating, on one release broker (R1) and on three (R3, one partition at RF 3), 100 B and 1 KiB.
# usage: benches/scripts/inflight-ab.sh [BIN_DIR (default target/release)] [ROUNDS (default 3)]
set -u
BIN=${1:-target/release}; ROUNDS=${2:-3}
W=$(mktemp -d /tmp/abXXXX)
start() { # n
  local n=$1 peers=""
  for i in $(seq 1 $n); do peers="$peers,$i=127.0.0.1:$((17400+i))"; done; peers=${peers#,}
  for i in $(seq 1 $n); do
    args=(--data-dir $W/d$n-$i --node-id $i --listen 127.0.0.1:$((17410+i)) --http-listen 127.0.0.1:$((17420+i)) --peer-listen 127.0.0.1:$((17400+i)) --log warn)
    [ $n -gt 1 ] && args+=(--peers $peers)
    $BIN/ferryd "${args[@]}" > $W/log$n-$i 2>&1 &
    echo $! >> $W/pids$n
  done
  for i in $(seq 1 $n); do for t in $(seq 1 200); do curl -sf 127.0.0.1:$((17420+i))/readyz >/dev/null && break; sleep 0.1; done; done
}
stop() { kill $(cat $W/pids$1) 2>/dev/null; wait 2>/dev/null; rm -f $W/pids$1; }
cpu() { local t=0; for p in $(cat $W/pids$1); do f=($(cut -d')' -f2 /proc/$p/stat)); t=$((t+f[11]+f[12])); done; echo $t; }
# The brokers remove a deleted topic's data in the background: wait for it (unlinking hundreds of MB costs
# them CPU that would otherwise fall on the next run, always the same side's; docs/benchmarks.md, session 17),
# then start the next run from the same page cache (when root).
settle() { # n
  for k in $(seq 1 300); do [ -z "$(ls -A $W/d$1-*/topics 2>/dev/null)" ] && break; sleep 0.1; done
  sync; [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches
}
F="$BIN/ferry --bootstrap 127.0.0.1:17411"
for n in 1 3; do
  start $n
  rep=$n; [ $n -eq 3 ] && rep=3
  for size in 100 1024; do
    cnt=$([ $size -eq 100 ] && echo 2000000 || echo 400000); [ $n -eq 3 ] && cnt=$((cnt/2))
    for r in $(seq 1 $ROUNDS); do
      for inf in 1 5; do
        t=r$n-s$size-i$inf-$r
        $F topic create $t --partitions 1 --replicas $rep >/dev/null
        c0=$(cpu $n)
        out=$($F bench produce --topic $t --messages $cnt --size $size --in-flight $inf -o json)
        c1=$(cpu $n)
        echo "R$n size=$size in_flight=$inf round=$r cpu_ticks=$((c1-c0)) $out"
        $F topic delete $t >/dev/null
        settle $n
      done
    done
  done
  stop $n
done
rm -rf $W
