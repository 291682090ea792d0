#!/bin/bash
# usage: ing.sh ROUNDS ; interleaved base/lean ingest with wrk beside nchan
for r in $(seq 1 $1); do
 for b in 0ce1187 lean; do
  out=$(/work/bins/bench-lean ingest --server-bin /work/bins/livecomments-$b --secs 6 --comments 1000000000 --generator wrk --nchan-url http://127.0.0.1:8090 --nchan-pid $(cd /work/main && scripts/nchan-setup pids) 2>/dev/null | tail -3)
  echo "round $r $b: $out"
 done
done
