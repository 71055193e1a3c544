#!/bin/bash
# Scale figures (issue 13, item 6), from release binaries on 127.0.0.1:
#  1. idle: three brokers, one topic of N partitions at replication factor R, nothing published: the time
#     until every partition has a leader, then after SETTLE seconds each broker's resident memory (VmRSS),
#     threads and open files, and the CPU of the three together over MEASURE seconds (% of one core);
#  2. restart with a large log: one broker, GB gibibytes of 1 KiB messages over 4 partitions, then a clean
#     restart (SIGTERM, start, until /readyz answers 200 and every partition has a leader) and a crash
#     restart (SIGKILL, the same), each with the time the stop took;
#  3. catch-up from disk: `ferry bench consume` of everything stored, once after dropping the page cache (needs
#     root: /proc/sys/vm/drop_caches; skipped otherwise, and said) and once warm.
#
# usage: benches/scripts/scale.sh [BIN_DIR (default target/release)] [TOPICS (default "10:3 1000:3 3000:3 10000:1")] [GB (default 10)]
#        TOPICS: the idle runs, each PARTITIONS:REPLICATION_FACTOR.
# Env: SETTLE (s, default 20), MEASURE (s, default 30). Needs about GB + 1 GiB of free disk under $TMPDIR.
set -u
BIN=${1:-target/release}
COUNTS=${2:-10:3 1000:3 3000:3 10000:1}
GB=${3:-10}
SETTLE=${SETTLE:-20}
MEASURE=${MEASURE:-30}
HZ=$(getconf CLK_TCK)
# A replica holds about 4 open files with one segment (docs/operations.md, "Open files"): 10,000 replicas on
# one broker need more than a 20,000-file limit. Raise it where allowed.
ulimit -n 100000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
W=$(mktemp -d "${TMPDIR:-/tmp}/scaleXXXX")
PIDS=()
trap 'kill -9 "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT

now_ms() { date +%s%3N; }
# start ID N_BROKERS [extra flags...]: one ferryd, in the background; its pid in PIDS[ID-1].
start() {
  local i=$1 n=$2 peers="" j
  shift 2
  for j in $(seq 1 "$n"); do peers="$peers,$j=127.0.0.1:$((17500 + j))"; done
  local args=(--data-dir "$W/d$i" --node-id "$i" --listen 127.0.0.1:$((17510 + i))
    --http-listen 127.0.0.1:$((17520 + i)) --peer-listen 127.0.0.1:$((17500 + i)) --log warn "$@")
  [ "$n" -gt 1 ] && args+=(--peers "${peers#,}")
  "$BIN/ferryd" "${args[@]}" >>"$W/log$i" 2>&1 &
  PIDS[$((i - 1))]=$!
}
# wait_ready ID: until /readyz of broker ID answers 200 (at most 10 minutes).
wait_ready() {
  local t
  for t in $(seq 1 6000); do
    curl -sf 127.0.0.1:$((17520 + $1))/readyz >/dev/null && return 0
    sleep 0.1
  done
  echo "broker $1 not ready after 10 minutes" >&2
  exit 1
}
F() { "$BIN/ferry" --bootstrap 127.0.0.1:17511 "$@"; }
# wait_leaders: until the cluster reports no partition without a leader (at most 10 minutes).
wait_leaders() {
  local t
  for t in $(seq 1 3000); do
    [ "$(F -o json cluster status 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["leaderless_partitions"])' 2>/dev/null)" = 0 ] && return 0
    sleep 0.2
  done
  echo "partitions still without a leader after 10 minutes" >&2
  exit 1
}
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(cut -d')' -f2 /proc/$p/stat | awk '{print $12 + $13}'))); done; echo $t; }
status() { awk -v k="$2:" '$1 == k {print $2}' /proc/$1/status; }
stop_all() { kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; PIDS=(); rm -rf "$W"/d* "$W"/log*; }

echo "# scale: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), open files limit $(ulimit -n), $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
for spec in $COUNTS; do
  n=${spec%:*} rf=${spec#*:}
  per_broker=$(((n * rf + 2) / 3))
  for i in 1 2 3; do start $i 3 --partitions-max $((per_broker > 4096 ? per_broker : 4096)); done
  for i in 1 2 3; do wait_ready $i; done
  t0=$(now_ms)
  F topic create idle --partitions "$n" --replicas "$rf" >/dev/null || { echo "idle $spec: topic create failed" >&2; exit 1; }
  wait_leaders
  t1=$(now_ms)
  sleep "$SETTLE"
  c0=$(ticks "${PIDS[@]}")
  sleep "$MEASURE"
  c1=$(ticks "${PIDS[@]}")
  rss="" thr="" fds=""
  for p in "${PIDS[@]}"; do
    rss="$rss $(($(status $p VmRSS) / 1024))"
    thr="$thr $(status $p Threads)"
    fds="$fds $(ls /proc/$p/fd | wc -l)"
  done
  cpu=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v s="$MEASURE" 'BEGIN {printf "%.1f", t / hz / s * 100}')
  echo "idle partitions=$n replication_factor=$rf replicas_per_broker=$per_broker create_to_all_leaders_s=$(awk -v d=$((t1 - t0)) 'BEGIN {printf "%.1f", d / 1000}') rss_mib=[${rss# }] threads=[${thr# }] open_files=[${fds# }] idle_cpu_pct_of_one_core=$cpu"
  stop_all
done

# 2. One broker, GB GiB of log.
start 1 1
wait_ready 1
F topic create big --partitions 4 --replicas 1 >/dev/null
msgs=$((GB * 1024 * 1024))
out=$(F -o json bench produce --topic big --messages $msgs --size 1024)
echo "log: $(du -sh "$W/d1" | cut -f1) written by $msgs messages of 1 KiB: $out"
restart() { # signal label
  local t0 t1 t2 t3
  t0=$(now_ms)
  kill -"$1" "${PIDS[0]}"
  wait "${PIDS[0]}" 2>/dev/null
  t1=$(now_ms)
  start 1 1
  t2=$(now_ms)
  wait_ready 1
  wait_leaders
  t3=$(now_ms)
  echo "restart $2: stop_s=$(awk -v d=$((t1 - t0)) 'BEGIN {printf "%.2f", d / 1000}') start_to_ready_and_leading_s=$(awk -v d=$((t3 - t2)) 'BEGIN {printf "%.2f", d / 1000}') rss_mib=$(($(status ${PIDS[0]} VmRSS) / 1024))"
}
restart TERM clean
restart KILL crash
# The worst case of a crash restart: active segments almost full (240 MiB of the default 256 MiB), which
# recovery scans whole (a topic of its own, 4 partitions).
F topic create full --partitions 4 --replicas 1 >/dev/null
F -o json bench produce --topic full --messages $((4 * 240 * 1024)) --size 1024 >/dev/null
restart KILL "crash, 4 active segments of 240 MiB to scan"

# 3. Catch-up: everything stored, cold then warm.
if [ -w /proc/sys/vm/drop_caches ]; then
  sync
  echo 3 >/proc/sys/vm/drop_caches
  echo "consume from disk (page cache dropped): $(F -o json bench consume --topic big)"
else
  echo "consume from disk: skipped (dropping the page cache needs root)"
fi
echo "consume warm: $(F -o json bench consume --topic big)"
