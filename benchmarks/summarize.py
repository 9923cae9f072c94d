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
    standing(runs)


def _best(run, arch, dtype, batch, engine_prefix, precision=None):
    """An engine's best ms per image in one run over its thread counts (and, for a prefix, its layouts)."""
    ms = [r["median_s"] / batch * 1e3 for r in run["rows"]
          if (r["arch"], r["dtype"], r["batch"]) == (arch, dtype, batch) and r["engine"].startswith(engine_prefix)
          and (precision is None or r["precision"] == precision)]
    return min(ms) if ms else None


def standing(runs):
    cells = list(dict.fromkeys((r["arch"], r["dtype"], r["batch"]) for run in runs for r in run["rows"]))
    for dtype in dict.fromkeys(c[1] for c in cells):
        engines = list(dict.fromkeys((r["engine"], r["precision"]) for run in runs for r in run["rows"]
                                     if r["dtype"] == dtype and not r["engine"].startswith(("mnv3_fast", "eager (ch"))))
        print()
        print(f"Standing, {dtype}: ms per image, each engine at its best thread count, median over runs (min-max); "
              "ratio: the fastest other engine at the same precision / mnv3_fast (above 1: mnv3_fast faster)")
        print()
        print("| cell | **mnv3_fast** | " + " | ".join(f"{e} ({p})" for e, p in engines) + " | ratio |")
        print("|---" * (len(engines) + 3) + "|")
        for arch, d, batch in cells:
            if d != dtype:
                continue
            def fmt(values):
                values = [v for v in values if v is not None]
                if not values:
                    return "-"
                return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
            ours = [_best(run, arch, dtype, batch, "mnv3_fast") for run in runs]
            cols = [fmt(_best(run, arch, dtype, batch, e, p) for run in runs) for e, p in engines]
            ratios = []
            for run, mine in zip(runs, ours):
                peers = [_best(run, arch, dtype, batch, e, p) for e, p in engines
                         if p == next(r["precision"] for r in run["rows"] if r["engine"].startswith("mnv3_fast")
                                      and r["dtype"] == dtype) and not e.startswith(("eager", "torchvision"))]
                peers = [v for v in peers if v is not None]
                if mine and peers:
                    ratios.append(min(peers) / mine)
            ratio = (f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else "-")
            print(f"| {arch.capitalize()} b{batch} | **{fmt(ours)}** | " + " | ".join(cols) + f" | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1:])
