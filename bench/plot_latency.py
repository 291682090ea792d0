"""Rate -> median p50/p99 of each server, from the JSON lines of scripts/bench-fanout-curve.

    python3 bench/plot_latency.py RESULTS.jsonl OUT.png     (needs matplotlib)

Prints the table it plots (runs per point, medians), so the figure's numbers are in the log.
"""
import json
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, out):
    runs = defaultdict(list)
    for line in open(src):
        line = line.strip()
        if line.startswith("JSON "):
            line = line[5:]
        if not line:
            continue
        r = json.loads(line)
        kind, rate, _round = r["label"].split("-")
        runs[(kind, int(rate))].append(r)
    print("kind rate runs p50_ms p99_ms deliveries_per_s missing duplicates")
    series = defaultdict(lambda: ([], [], []))
    for (kind, rate), rs in sorted(runs.items()):
        med = lambda k: statistics.median(x[k] for x in rs if x.get(k) is not None)
        p50, p99, dps = med("latency_p50_ms"), med("latency_p99_ms"), med("deliveries_per_s")
        miss = sum(x.get("missing", 0) for x in rs)
        dup = sum(x.get("duplicates", 0) for x in rs)
        print(f"{kind} {rate} {len(rs)} {p50:.1f} {p99:.1f} {dps:.0f} {miss} {dup}")
        s = series[kind]
        s[0].append(rate)
        s[1].append(p50)
        s[2].append(p99)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    names = {"lc": "livecomments", "limit": "box's limit (minimal broadcaster)"}
    for kind, (rates, p50, p99) in sorted(series.items()):
        line = ax.plot(rates, p99, marker="o", label=f"{names.get(kind, kind)} p99")[0]
        ax.plot(rates, p50, marker=".", linestyle="--", color=line.get_color(),
                label=f"{names.get(kind, kind)} p50")
    ax.set_yscale("log")
    ax.set_xlabel("comments per second on one post (10,000 viewers)")
    ax.set_ylabel("delivery latency, ms (log)")
    ax.set_title("Fan-out: rate -> latency, medians of the runs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
