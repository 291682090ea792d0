#!/bin/bash
for r in 1 2 3; do
 for b in 0ce1187 lean; do
  first=""; [ $r = 2 ] && first="--nchan-first"
  out=$(/work/bins/bench-lean reactions --server-bin /work/bins/livecomments-$b --viewers 10000 --secs 10 --conns 64 --reactors 10000 --generator wrk --nchan-url http://127.0.0.1:8090 --nchan-pid $(cd /work/main && scripts/nchan-setup pids) $first 2>/dev/null | grep '^JSON')
  echo "round $r $b: $out"
 done
done
