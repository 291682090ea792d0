#!/usr/bin/env bash
# Past the ceiling, before and after the shared-frame backlog and resumes from memory:
# 10,000 viewers of one post at 600 comments/s for 10 s, BEFORE and AFTER (release binaries of
# 104fadc and of the change) interleaved, ROUNDS rounds; one JSON line per run in OUT.
#
#   BEFORE=bin AFTER=bin bench/results/2026-12-04-recent/run.sh [ROUNDS] [OUT]
set -euo pipefail
ROUNDS="${1:-3}"
OUT="${2:-bench/results/2026-12-04-recent/past-ceiling.jsonl}"
BENCH="${LC_BENCH:-target/release/livecomments-bench}"
for round in $(seq 1 "$ROUNDS"); do
  for which in before after; do
    bin=$BEFORE; [ "$which" = after ] && bin=$AFTER
    "$BENCH" fanout --server-bin "$bin" --viewers 10000 --posts 1 --comments 6000 --rate 600 \
      --max-secs 10 --idle-secs 0 --drain-secs 10 --label "$which-600-$round" --json-out "$OUT" \
      | grep -E "^(deliveries_per_s|latency_p50_ms|latency_p99_ms|server_cpu_pct|generator_cpu_pct|stream_disconnects|missing|duplicates) " \
      | awk -v w="$which" '{printf "%s=%s ", $1, $2} END {print w}'
  done
done
