"""Merges several benchmarks/run.py results into one table with the spread across runs.

    python benchmarks/summarize.py benchmarks/results/2026-11-29-cpu/run*/results.json > summary.md

Per (model, precision, batch, engine, threads): ms per image, the median of the
runs' medians with the min-max across runs, and the speed-up over eager NCHW
likewise (results from before the thread column count as one thread setting).
Then the standing, one table per precision: each engine at its best thread count
in each run (mnv3_fast at the better of its two input layouts), the median over
runs with the min-max, and mnv3_fast's ratio to the fastest other engine.
"""
from __future__ import annotations

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _report as R  # noqa: E402


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
    standing(runs)


def _spread(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def standing(runs):
    """One table per precision from each run's cells: every engine's best row (run.py's own
    `best_per_engine`) and the ratio run.py stored in the cell's standing."""
    cells = [c for c in runs[0].get("cells", ())]
    if not cells:
        return  # (results from before run.py recorded cells)
    for dtype in dict.fromkeys(c["dtype"] for c in cells):
        best = {}  # (run, arch, batch) -> {engine: best row}
        for i, run in enumerate(runs):
            for c in run["cells"]:
                if c["dtype"] == dtype:
                    best[i, c["arch"], c["batch"]] = R.best_per_engine([r for r in run["rows"]
                                                                        if r["cell"] == c["index"]])
        engines = list(dict.fromkeys((row["engine"], row["precision"]) for by_engine in best.values()
                                     for row in by_engine.values()
                                     if row["key"] not in R.FAST_KEYS and row["key"] != "eager_cl"))
        print()
        print(f"Standing, {dtype}: ms per image, each engine at its best thread count, median over runs (min-max); "
              "ratio: the fastest other engine at the same precision / mnv3_fast (above 1: mnv3_fast faster)")
        print()
        print("| cell | **mnv3_fast** | " + " | ".join(f"{e} ({p})" for e, p in engines) + " | ratio |")
        print("|---" * (len(engines) + 3) + "|")
        for c in cells:
            if c["dtype"] != dtype:
                continue
            arch, batch = c["arch"], c["batch"]
            per_run = [best.get((i, arch, batch), {}) for i in range(len(runs))]
            ours = [min((r["ms_per_image"] for r in b.values() if r["key"] in R.FAST_KEYS), default=None)
                    for b in per_run]
            cols = [_spread(b[e]["ms_per_image"] if e in b else None for b in per_run) for e, _ in engines]
            ratios = [(rc["standing"] or {}).get("ratio") for run in runs for rc in run["cells"]
                      if (rc["arch"], rc["dtype"], rc["batch"]) == (arch, dtype, batch)]
            print(f"| {arch.capitalize()} b{batch} | **{_spread(ours)}** | " + " | ".join(cols)
                  + f" | {_spread(ratios)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
