#!/usr/bin/env bash
# The hyper-based generator (`--client hyper`): livecomments (AFTER) and the limit at RATES,
# 10,000 viewers of one post, 10 s, 3 rounds interleaved.
#   AFTER=bin RATES="150 250" bench/results/2026-12-04-recent/hyper.sh [OUT]
set -euo pipefail
OUT="${1:-bench/results/2026-12-04-recent/hyper.jsonl}"
BENCH="${LC_BENCH:-target/release/livecomments-bench}"
for round in 1 2 3; do
  for r in ${RATES:-150 250}; do
    for kind in lc limit; do
      if [ "$kind" = lc ]; then target=(--server-bin "$AFTER"); else target=(--kind limit); fi
      "$BENCH" fanout "${target[@]}" --viewers 10000 --posts 1 --comments $((r * 10)) --rate "$r" \
        --max-secs 10 --idle-secs 0 --drain-secs 10 --client hyper --label "$kind-$r-$round" \
        --json-out "$OUT" \
        | grep -E "^(deliveries_per_s|latency_p50_ms|latency_p99_ms|server_cpu_pct|generator_cpu_pct|stream_disconnects|missing|duplicates) " \
        | awk -v w="$kind-$r-$round" '{printf "%s=%s ", $1, $2} END {print w}'
    done
  done
done
