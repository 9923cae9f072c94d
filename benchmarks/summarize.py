"""Merges several benchmarks/run.py results into one table with the spread across runs.

    python benchmarks/summarize.py benchmarks/results/2026-11-29-cpu/run*/results.json > summary.md

Per (model, precision, batch, engine, threads): ms per image, the median of the
runs' medians with the min-max across runs, and the speed-up over eager NCHW
likewise (results from before the thread column count as one thread setting).
"""
from __future__ import annotations

import json
import statistics
import sys


def main(paths):
    runs = [json.load(open(p)) for p in paths]
    env = runs[0]["environment"]
    key = lambda r: (r["arch"], r["dtype"], r["batch"], r["engine"], r.get("threads"))  # noqa: E731
    keys = list(dict.fromkeys(key(r) for run in runs for r in run["rows"]))
    print(f"Machine: {env['cpu']} ({env['cpu_count']} cores, {env['cpu_capability']}), {env['torch_threads']} threads, "
          f"torch {env['torch']}; {len(runs)} runs of `{env['command']}` ({', '.join(r['environment']['date'] for r in runs)}).")
    print()
    print("| model | dtype | batch | engine | threads | ms per image, median (min-max over runs) | speed-up vs eager NCHW (min-max) |")
    print("|---|---|---|---|---|---|---|")
    for k in keys:
        arch, dtype, batch, engine, threads = k
        rows = [r for run in runs for r in run["rows"] if key(r) == k]
        ms = [r["median_s"] / batch * 1e3 for r in rows]
        ups = [r["speedup"] for r in rows if r["speedup"]]
        name = f"**{engine}**" if engine.startswith("mnv3_fast") else engine
        print(f"| {arch.capitalize()} | {dtype} | {batch} | {name} | {threads or env['torch_threads']} | {statistics.median(ms):.2f} ({min(ms):.2f}-{max(ms):.2f}) | "
              f"{statistics.median(ups):.2f}x ({min(ups):.2f}-{max(ups):.2f}) |"
              + ("" if len(rows) == len(runs) else f" ({len(rows)} of {len(runs)} runs)"))


if __name__ == "__main__":
    main(sys.argv[1:])
