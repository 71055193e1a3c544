#!/bin/bash
# A/B of two builds on the replicated path: three release brokers (one partition at RF 3), `ferry bench produce`
# of 1 KiB messages, the builds alternating. Per run: MB/s acknowledged, server CPU per message (utime + stime of
# the three brokers, from /proc/<pid>/stat, and each apart: the kernel's share swings with this VM's memory,
# docs/benchmarks.md, session 19) and the bytes each broker read from files (rchar from
# /proc/<pid>/io: read/pread calls; sockets are read with recv, which it does not count). The background
# scrub's reads are in that count too, so it varies from run to run.
# usage: benches/scripts/r3-ab.sh BIN_DIR_A BIN_DIR_B [ROUNDS (default 5)] [MESSAGES (default 400000)] [SIZE (default 1024)]
set -u
A=$1; B=$2; ROUNDS=${3:-5}; CNT=${4:-400000}; SIZE=${5:-1024}
run() { # bin_dir label
  local BIN=$1 W pids=() peers="1=127.0.0.1:17401,2=127.0.0.1:17402,3=127.0.0.1:17403"
  W=$(mktemp -d /tmp/r3abXXXX)
  for i in 1 2 3; do
    $BIN/ferryd --data-dir $W/d$i --node-id $i --listen 127.0.0.1:$((17410+i)) --http-listen 127.0.0.1:$((17420+i)) \
      --peer-listen 127.0.0.1:$((17400+i)) --log warn --peers $peers > $W/log$i 2>&1 &
    pids+=($!)
  done
  for i in 1 2 3; do for t in $(seq 1 200); do curl -sf 127.0.0.1:$((17420+i))/readyz >/dev/null && break; sleep 0.1; done; done
  local F="$BIN/ferry --bootstrap 127.0.0.1:17411"
  $F topic create t --partitions 1 --replicas 3 >/dev/null
  $F bench produce --topic t --messages 20000 --size $SIZE -o json >/dev/null # warm-up
  cpu() { local u=0 s=0 p f; for p in ${pids[@]}; do f=($(cut -d')' -f2 /proc/$p/stat)); u=$((u+f[11])); s=$((s+f[12])); done; echo $u,$s; }
  rd() { local p; for p in ${pids[@]}; do awk '/^rchar/{printf "%s ", $2}' /proc/$p/io; done; }
  local c0 r0 out c1 r1
  c0=$(cpu); r0=$(rd)
  out=$($F bench produce --topic t --messages $CNT --size $SIZE -o json)
  c1=$(cpu); r1=$(rd)
  python3 - "$2" "$c0" "$c1" "$r0" "$r1" "$CNT" "$out" <<'PY'
import json, sys
label, c0, c1, r0, r1, cnt, out = sys.argv[1:]
o = json.loads(out)
reads = [(int(b) - int(a)) // 10**6 for a, b in zip(r0.split(), r1.split())]
(u0, s0), (u1, s1) = ([int(x) for x in c.split(",")] for c in (c0, c1))
per = lambda ticks: ticks * 10**6 / 100 / int(cnt)  # clock ticks are 1/100 s
print(f"{label}: {o['mb_per_sec']:.0f} MB/s, {per(u1 - u0 + s1 - s0):.2f} us server CPU/msg (user {per(u1 - u0):.2f}, "
      f"system {per(s1 - s0):.2f}), MB of file reads per broker {reads}, failed {o['failed']}")
PY
  kill ${pids[@]}; wait 2>/dev/null; rm -rf $W
}
for r in $(seq 1 $ROUNDS); do run $A A; run $B B; done
