#!/usr/bin/env bash
# The loop that caught the lost hub "ready" (1 of 8 runs before the fix, 12 of 12 fine after):
# the reactions scenario with nchan first, and every 2 s the server's listen queue, open fds and
# per-thread CPU.
cd "$(dirname "$0")/../../.."
for i in $(seq 1 ${N:-20}); do
  scripts/nchan-setup stop >/dev/null 2>&1; scripts/nchan-setup start 8090 1 >/dev/null
  LIVECOMMENTS_HTTP_THREADS=2 timeout 300 target/release/livecomments-bench reactions --server-bin target/release/livecomments --viewers 10000 --secs 3 --conns 64 --reactors 10000 --generator bench --nchan-url http://127.0.0.1:8090 --nchan-pid "$(scripts/nchan-setup pids)" --nchan-first --connect-timeout-secs 30 --label c$i --json-out /tmp/lcb-loop-catch2.jsonl > /tmp/lcb-loop-catch2-run.log 2>&1 &
  bp=$!
  : > /tmp/lcb-loop-snap-$i.txt
  while kill -0 $bp 2>/dev/null; do
    for p in $(pgrep -f "target-lead/release/livecomments standalone"); do
      echo "t=$(date +%s) pid=$p" >> /tmp/lcb-loop-snap-$i.txt
      ss -ltnp 2>/dev/null | grep "pid=$p," >> /tmp/lcb-loop-snap-$i.txt
      echo "estab=$(ls /proc/$p/fd 2>/dev/null | wc -l)" >> /tmp/lcb-loop-snap-$i.txt
      for t in /proc/$p/task/*; do echo "$(cat $t/comm) $(awk '{print $3, $14+$15}' $t/stat)"; done | sort | tr '\n' ';' >> /tmp/lcb-loop-snap-$i.txt; echo >> /tmp/lcb-loop-snap-$i.txt
    done
    sleep 2
  done
  c=$(tail -1 /tmp/lcb-loop-catch2.jsonl | python3 -c 'import json,sys;print(json.load(sys.stdin)["connected"])')
  echo "run $i connected=$c"
  [ "$c" != "10000" ] && { echo CAUGHT $i; exit 1; }
done
