#!/usr/bin/env python3
"""Draws docs/benchmarks.png from the CSV files the benchmarks write to target/bench/:

  latency.csv  (cargo bench --bench latency): in-process p50/p99 against policy count
  load.csv     (cargo bench --bench load):    direct gRPC throughput, cedargate vs no-op server
  envoy.csv    (cargo bench --bench envoy):   requests/s through Envoy per filter chain

Each panel shows the median over the benchmark's rounds. A missing CSV leaves its panel out.
matplotlib is installed on first use into target/bench/pylib (pinned), like CI installs buf.

Run: python3 scripts/bench-chart.py [--out docs/benchmarks.png]
"""

import argparse
import csv
import importlib
import os
import statistics
import subprocess
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
RESULTS = os.path.join(TARGET, "bench")
PYLIB = os.path.join(RESULTS, "pylib")
MATPLOTLIB = "matplotlib==3.9.2"


def matplotlib_pyplot():
    sys.path.insert(0, PYLIB)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--target", PYLIB, MATPLOTLIB],
            check=True,
        )
        importlib.invalidate_caches()  # the failed import above cached "not there"
        import matplotlib  # noqa: F401
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def rows(name):
    path = os.path.join(RESULTS, name)
    if not os.path.exists(path):
        print(f"{path}: missing, panel left out (run the benchmark that writes it)")
        return None
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def medians(records, key, value):
    groups = defaultdict(list)
    for r in records:
        groups[key(r)].append(float(r[value]))
    return {k: statistics.median(v) for k, v in groups.items()}


def latency_panel(ax, records):
    for server, style in (("cedargate", "o-"), ("baseline", "s--")):
        mine = [r for r in records if r["server"] == server]
        for pct, alpha in (("p99_us", 1.0), ("p50_us", 0.5)):
            m = medians(mine, lambda r: int(r["policies"]), pct)
            xs = sorted(m)
            label = f"{'no-op handler' if server == 'baseline' else 'cedargate'} {pct[:3]}"
            ax.plot(xs, [m[x] for x in xs], style, alpha=alpha, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("policies in the set")
    ax.set_ylabel("µs per Check (in-process)")
    ax.set_title("Check latency against policy count")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def load_panel(ax, records):
    records = [r for r in records if r["concurrency"] != "1"]
    m = medians(records, lambda r: (r["transport"], int(r["concurrency"]), r["server"]), "throughput")
    cases = sorted({(t, c) for (t, c, _) in m})
    xs = range(len(cases))
    width = 0.38
    base = [m.get((t, c, "baseline"), 0) / 1000 for t, c in cases]
    ours = [m.get((t, c, "cedargate"), 0) / 1000 for t, c in cases]
    ax.bar([x - width / 2 for x in xs], base, width, label="no-op tonic server")
    ax.bar([x + width / 2 for x in xs], ours, width, label="cedargate (100 policies)")
    for x, b, o in zip(xs, base, ours):
        if b:
            ax.annotate(f"{o / b:.2f}×", (x + width / 2, o), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{t}\n{c} streams" for t, c in cases], fontsize=8)
    ax.set_ylabel("thousand checks/s")
    ax.set_title("Direct gRPC throughput")
    ax.legend(fontsize=8)


def envoy_panel(ax, records):
    m = medians(records, lambda r: r["variant"], "rps")
    order = [v for v in dict.fromkeys(r["variant"] for r in records)]
    ax.barh(range(len(order)), [m[v] / 1000 for v in order], color="tab:green")
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels(order, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("thousand requests/s through Envoy (wrk)")
    ax.set_title("Through Envoy 1.40")
    none = m.get("none")
    for i, v in enumerate(order):
        if none:
            ax.annotate(f"{m[v] / none:.2f}×", (m[v] / 1000, i), va="center", fontsize=8)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.png"))
    args = parser.parse_args()
    panels = [(f, rows(name)) for f, name in (
        (latency_panel, "latency.csv"), (load_panel, "load.csv"), (envoy_panel, "envoy.csv"))]
    panels = [(f, r) for f, r in panels if r]
    if not panels:
        sys.exit(f"no benchmark results under {RESULTS}: run cargo bench --bench latency (load, envoy)")
    plt = matplotlib_pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5))
    if len(panels) == 1:
        axes = [axes]
    for ax, (draw, records) in zip(axes, panels):
        draw(ax, records)
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
