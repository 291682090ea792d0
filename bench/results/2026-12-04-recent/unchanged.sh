#!/usr/bin/env bash
# Nothing else slower: the hot-post and idle-viewer rows, BEFORE and AFTER interleaved, 3 rounds.
#   BEFORE=bin AFTER=bin bench/results/2026-12-04-recent/unchanged.sh [OUT]
set -euo pipefail
OUT="${1:-bench/results/2026-12-04-recent/unchanged.jsonl}"
BENCH="${LC_BENCH:-target/release/livecomments-bench}"
for round in 1 2 3; do
  for which in before after; do
    bin=$BEFORE; [ "$which" = after ] && bin=$AFTER
    "$BENCH" fanout --server-bin "$bin" --viewers 10000 --posts 1 --comments 1000 --rate 100 \
      --max-secs 10 --label "hot-$which-$round" --json-out "$OUT" \
      | grep -E "^(deliveries_per_s|latency_p99_ms|missing|duplicates) " | awk -v w="hot $which" '{printf "%s=%s ", $1, $2} END {print w}'
    "$BENCH" fanout --server-bin "$bin" --viewers 10000 --posts 1 --idle-secs 5 \
      --label "idle-$which-$round" --json-out "$OUT" \
      | grep -E "^(server_kib_per_viewer) " | awk -v w="idle $which" '{printf "%s=%s ", $1, $2} END {print w}'
  done
done
