"""The speed table: MobileNetV3 on mnv3_fast against eager PyTorch, torch.compile,
ONNX Runtime, OpenVINO and torchvision, same weights, same inputs, one process.

    python benchmarks/run.py                       # CPU: Large and Small, batch 1 and 32, fp32
    python benchmarks/run.py --no-compile --arch small --batch 1
    python benchmarks/run.py --device cuda         # batch 1, 32, 256; fp32 and fp16; channels_last
    python benchmarks/run.py --device cuda --engines eager,eager_cl,compile,compile_max,fast_cl,fast_graphs \
        --compile-budget-s 150 --max-autotune-batches 256      # what benchmarks/gpu_check.sh runs
    python benchmarks/run.py --quick               # a fast smoke run

Each cell is the median over interleaved repeats (every engine takes one
sample in turn, so drifts in machine speed hit all engines alike) after
warm-up; the spread is the min-max of those samples.  "speed-up" is against
eager NCHW in the same run.  "max |diff|" is the largest absolute difference
of the logits from the eager reference's.  Writes results.json (machine,
versions, command, every raw timing), results.md and, with matplotlib,
results.png to --out (default benchmarks/results/<date>-<device>/).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import engines as E  # noqa: E402
from _timing import environment, median, time_interleaved  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--arch", default="large,small", help="comma-separated: large, small")
    p.add_argument("--batch", default=None, help="comma-separated batch sizes (CPU default 1,32; CUDA 1,32,256)")
    p.add_argument("--dtype", default=None, help="comma-separated: fp32, fp16, bf16 (CPU default fp32; CUDA fp32,fp16)")
    p.add_argument("--size", type=int, default=224, help="input height and width")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every engine (default: all cores)")
    p.add_argument("--engines", default=",".join(E.ALL_ENGINES), help=f"comma-separated subset of {','.join(E.ALL_ENGINES)}")
    p.add_argument("--repeats", type=int, default=None, help="timed samples per engine and cell (default 7)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compile time is long on small CPUs)")
    p.add_argument("--max-autotune", action="store_true", help="torch.compile with mode='max-autotune' (CUDA)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="CUDA: skip eager's CUDA-graph rows at batch 1")
    p.add_argument("--compile-budget-s", type=float, default=None,
                   help="seconds of torch.compile first calls (compilation) allowed in the whole run; once spent, "
                        "the remaining compile engines are skipped and listed as such")
    p.add_argument("--max-autotune-batches", default=None,
                   help="comma-separated batch sizes at which the compile_max engine runs (default: all)")
    p.add_argument("--quick", action="store_true", help="3 repeats, 1 warm-up: a smoke run, not a measurement")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/<date>-<device>/)")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    args.batch = [int(b) for b in (args.batch or ("1,32,256" if cuda else "1,32")).split(",")]
    args.dtype = (args.dtype or ("fp32,fp16" if cuda else "fp32")).split(",")
    for d in args.dtype:
        if d not in E.DTYPES:
            p.error(f"unknown dtype {d!r}; choose from {', '.join(E.DTYPES)}")
    args.arch = [a.strip().lower() for a in args.arch.split(",")]
    for a in args.arch:
        if a not in ("large", "small"):
            p.error(f"unknown arch {a!r}; choose from large, small")
    args.engines = [e.strip() for e in args.engines.split(",")]
    args.max_autotune_batches = (None if args.max_autotune_batches is None
                                 else [int(b) for b in args.max_autotune_batches.split(",")])
    args.compile_spent_s = 0.0
    args.skipped = []
    if args.no_compile:
        args.engines = [e for e in args.engines if e != "compile"]
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.warmup = 1 if args.quick else 3
    return args


def progress(total):
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="cell", dynamic_ncols=True)
    except ImportError:
        class Plain:
            def __init__(self):
                self.n = 0

            def update(self, k=1):
                self.n += k
                print(f"  {self.n}/{total} cells done", flush=True)

            def set_description(self, text):
                print(f"  {text}", flush=True)

            def write(self, text):
                print(text, flush=True)

            def close(self):
                pass

        return Plain()


def measure_cell(arch, dtype_name, batch, args, models, bar):
    """Builds every engine for one (arch, dtype, batch) cell and times them interleaved."""
    dtype = E.DTYPES[dtype_name]
    x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(batch)).to(args.device)
    with torch.inference_mode():
        expected = models.reference(x).float()
    built, rows = {}, []
    for key in args.engines:
        if key in E.COMPILE_ENGINES:
            why = None
            if key == "compile_max" and args.max_autotune_batches is not None and batch not in args.max_autotune_batches:
                why = f"not at batch {batch} (--max-autotune-batches {','.join(map(str, args.max_autotune_batches))})"
            elif args.compile_budget_s is not None and args.compile_spent_s >= args.compile_budget_s:
                why = f"the compile budget ({args.compile_budget_s:.0f} s) is spent"
            if why:
                args.skipped.append(f"{arch} {dtype_name} b{batch} {key}: {why}")
                bar.write(f"  {arch} {dtype_name} b{batch}: skipping {key}: {why}")
                continue
        try:
            engine = E.build(key, models, dtype, "max-autotune" if args.max_autotune else None)
            start = time.perf_counter()
            out = engine.run(x)  # the first call: compilation, export warm-up, allocator growth
            if args.device == "cuda":
                torch.cuda.synchronize()
            first_call_s = time.perf_counter() - start
            if key in E.COMPILE_ENGINES:
                args.compile_spent_s += first_call_s
            built[engine.name] = engine
            if args.device == "cuda" and batch == 1 and key in ("eager", "eager_cl") and not args.no_cuda_graphs:
                graphed = E.cuda_graph(engine, x)
                built[graphed.name] = graphed
            rows.append(dict(engine=engine.name, first_call_s=first_call_s, setup_s=engine.setup_s, notes=engine.notes,
                             max_abs_diff=(out.float() - expected).abs().max().item()))
        except E.EngineUnavailable as exc:
            bar.write(f"  {arch} {dtype_name} b{batch}: skipping {key}: {exc}")
        except Exception as exc:  # an engine that breaks must not take the table down with it
            bar.write(f"  {arch} {dtype_name} b{batch}: {key} failed: {type(exc).__name__}: {str(exc)[:300]}")
    for name, engine in built.items():
        if name not in {r["engine"] for r in rows}:
            out = engine.run(x)
            rows.append(dict(engine=name, first_call_s=0.0, setup_s=0.0, notes=engine.notes,
                             max_abs_diff=(out.float() - expected).abs().max().item()))
    samples = time_interleaved({n: (lambda e=e: e.run(x)) for n, e in built.items()}, repeats=args.repeats,
                               warmup=args.warmup, device=args.device)
    baseline = next((median(s) for n, s in samples.items() if n.startswith("eager (NCHW)")), None)
    for row in rows:
        s = samples[row["engine"]]
        row.update(arch=arch, dtype=dtype_name, batch=batch, samples_s=s, median_s=median(s), min_s=min(s), max_s=max(s),
                   images_per_s=batch / median(s), speedup=(baseline / median(s)) if baseline else None)
    return rows


def markdown(rows, env, args):
    lines = [f"# MobileNetV3 inference speed ({env.get('gpu') or env['cpu']})", "",
             f"{env['date']}; torch {env['torch']}, python {env['python']}"
             + (f", triton {env['triton']}" if "triton" in env else "")
             + f"; {env['torch_threads']} CPU threads; input {args.size}x{args.size}; "
             f"median of {args.repeats} interleaved samples after {args.warmup} warm-up calls, (min-max).", "",
             f"Command: `{env['command']}`", "",
             "| model | dtype | batch | engine | images/s | ms per batch (min-max) | speed-up vs eager | max \\|diff\\| |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speedup = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        lines.append(f"| {r['arch'].capitalize()} | {r['dtype']} | {r['batch']} | {r['engine']} | {r['images_per_s']:.1f} | "
                     f"{r['median_s']*1e3:.2f} ({r['min_s']*1e3:.2f}-{r['max_s']*1e3:.2f}) | {speedup} | {r['max_abs_diff']:.1e} |")
    setup = [r for r in rows if r["engine"].startswith("torch.compile") or r["setup_s"]]
    if setup:
        lines += ["", "One-time costs (not in the timings above): " + "; ".join(
            f"{r['arch']} b{r['batch']} {r['engine']}: first call {r['first_call_s']:.1f} s"
            + (f", export/load {r['setup_s']:.1f} s" if r["setup_s"] else "") for r in setup) + "."]
    notes = sorted({f"{r['engine']}: {n}" for r in rows for n in r["notes"]})
    if notes:
        lines += ["", "Engine settings: " + "; ".join(notes) + "."]
    if getattr(args, "skipped", None):
        lines += ["", "Not measured: " + "; ".join(args.skipped) + "."]
    return "\n".join(lines) + "\n"


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")
        return
    cells = list(dict.fromkeys((r["arch"], r["dtype"], r["batch"]) for r in rows))
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 4), squeeze=False)
    for ax, cell in zip(axes[0], cells):
        sub = [r for r in rows if (r["arch"], r["dtype"], r["batch"]) == cell]
        ax.barh([r["engine"] for r in sub], [r["images_per_s"] for r in sub],
                color=["tab:green" if r["engine"].startswith("mnv3_fast") else "tab:gray" for r in sub])
        ax.set_title(f"{cell[0].capitalize()} {cell[1]} batch {cell[2]}")
        ax.set_xlabel("images/s")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available to torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    warnings.filterwarnings("ignore", category=UserWarning)
    env = environment(args.device)
    env["args"] = {k: v for k, v in vars(args).items()}
    cells = [(a, d, b) for a in args.arch for d in args.dtype for b in args.batch]
    rows = []
    bar = progress(len(cells))
    for arch in args.arch:
        models = E.Models(arch, args.device, threads, args.size)
        for dtype_name in args.dtype:
            for batch in args.batch:
                bar.set_description(f"{arch} {dtype_name} batch {batch}")
                rows += measure_cell(arch, dtype_name, batch, args, models, bar)
                bar.update(1)
    bar.close()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"{datetime.date.today().isoformat()}-{args.device}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"environment": env, "rows": rows, "skipped": args.skipped}, f, indent=1)
    table = markdown(rows, env, args)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table)
    plot(rows, os.path.join(out, "results.png"))
    print(table)
    print(f"written to {out}")
    return rows


if __name__ == "__main__":
    main()
