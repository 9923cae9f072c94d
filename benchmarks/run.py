"""The speed table: MobileNetV3 on mnv3_fast against eager PyTorch, torch.compile,
ONNX Runtime, OpenVINO and torchvision, same weights, same inputs, one process.

    python benchmarks/run.py                        # CPU: Large and Small, batch 1 and 32, fp32, 1 and all threads
    python benchmarks/run.py --dtype fp32,bf16,int8 # every CPU precision, with its peers
    python benchmarks/run.py --quick                # a smoke run: 3 samples, no torch.compile
    python benchmarks/run.py --arch small --batch 1 --threads 1 --no-compile
    python benchmarks/run.py --device cuda          # batch 1, 32, 256; fp32 and fp16; CUDA graphs at batch 1

Each cell (model, precision, batch) times every engine at every thread count,
interleaved (each takes one sample in turn, so a drift in machine speed hits
all alike), after warm-up: the median and the min-max of the samples, in ms per
image.  The standing compares mnv3_fast with the fastest other engine of the
same precision, each at its best thread count.  Accuracy is measured against
the fp32 eager reference on random images (closeness, not accuracy on data).

Each run writes results.json (machine, CPU flags, load, versions, command,
every raw timing), results.md, results.png and log.txt (library warnings) to a
new folder, benchmarks/runs/<date>_<time>_<device>_<mode>/ (or --out).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import sys
import time
import warnings

import torch

# Only benchmarks/ goes on sys.path (python puts it there already for `python benchmarks/run.py`):
# never the repository root, so `mnv3_fast` is the installed package, not the checkout's unbuilt copy.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _report as R  # noqa: E402
import engines as E  # noqa: E402
from _timing import LoadMonitor, environment, isa_summary, machine_load, median, time_interleaved  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ACCURACY_IMAGES = 16  # per cell, for the top-1 agreement (in batches of the cell's size)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--arch", default="large,small", help="comma-separated: large, small")
    p.add_argument("--batch", default=None, help="comma-separated batch sizes (CPU default 1,32; CUDA 1,32,256)")
    p.add_argument("--dtype", default=None, help="comma-separated precisions: CPU fp32, bf16, int8 (default fp32); "
                                                 "CUDA fp32, fp16, bf16 (default fp32,fp16)")
    p.add_argument("--size", type=int, default=224, help="input height and width")
    p.add_argument("--threads", default=None, help="comma-separated CPU thread counts; every engine runs at each "
                                                   "(default: 1 and all usable cores)")
    p.add_argument("--engines", default=",".join(E.DEFAULT_ENGINES),
                   help=f"comma-separated subset of {','.join(E.ALL_ENGINES)} (default: all but fast_graphs and "
                        "compile_max, which gpu_check.sh adds on CUDA)")
    p.add_argument("--repeats", type=int, default=None, help="timed samples per engine and cell (default 7; --quick 3)")
    p.add_argument("--no-compile", action="store_true",
                   help="skip torch.compile and PT2E (their first call compiles for a minute or more per cell)")
    p.add_argument("--max-autotune", action="store_true", help="torch.compile with mode='max-autotune' (CUDA)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="CUDA: skip eager's CUDA-graph rows at batch 1")
    p.add_argument("--compile-budget-s", type=float, default=None,
                   help="seconds of torch.compile first calls (compilation) allowed in the whole run; once spent, "
                        "the remaining compiling engines are skipped and listed as such")
    p.add_argument("--max-autotune-batches", default=None,
                   help="comma-separated batch sizes at which the compile_max engine runs (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 samples, 1 warm-up call, no torch.compile; not a measurement")
    p.add_argument("--out", default=None, help="output folder (default: a new benchmarks/runs/<date>_<time>_<device>_<mode>/); "
                                               "refused if it already holds a results.json")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    try:
        args.batch = [int(b) for b in (args.batch or ("1,32,256" if cuda else "1,32")).split(",")]
    except ValueError:
        p.error(f"--batch takes comma-separated integers, got {args.batch!r}")
    allowed = E.CUDA_PRECISIONS if cuda else E.CPU_PRECISIONS
    args.dtype = [d.strip() for d in (args.dtype or ("fp32,fp16" if cuda else "fp32")).split(",")]
    for d in args.dtype:
        if d not in allowed:
            p.error(f"unknown dtype {d!r} on {args.device}; choose from {', '.join(allowed)}")
    args.arch = [a.strip().lower() for a in args.arch.split(",")]
    for a in args.arch:
        if a not in ("large", "small"):
            p.error(f"unknown arch {a!r}; choose from large, small")
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for e in args.engines:
        if e not in E.ALL_ENGINES:
            p.error(f"unknown engine {e!r}; choose from {', '.join(E.ALL_ENGINES)}")
    if args.no_compile or args.quick:
        args.engines = [e for e in args.engines if e not in E.COMPILING]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cuda:
        if args.threads:
            p.error("--threads is for the CPU")
        args.threads = [None]  # leave torch's setting
    else:
        try:
            args.threads = sorted({int(t) for t in args.threads.split(",")}) if args.threads else sorted({1, cores})
        except ValueError:
            p.error(f"--threads takes comma-separated integers, got {args.threads!r}")
        if args.threads[0] < 1:
            p.error("--threads must be >= 1")
    args.repeats = args.repeats or (3 if args.quick else 7)
    try:
        args.max_autotune_batches = (None if args.max_autotune_batches is None
                                     else [int(b) for b in args.max_autotune_batches.split(",")])
    except ValueError:
        p.error(f"--max-autotune-batches takes comma-separated integers, got {args.max_autotune_batches!r}")
    args.compile_spent_s = 0.0
    args.warmup = 1 if args.quick else 3
    args.mode = "quick" if args.quick else "full"
    return args


def output_folder(args) -> str:
    """A new folder for this run; --out may name an existing folder, but not one that holds results."""
    if args.out:
        out = os.path.abspath(args.out)
        if os.path.exists(os.path.join(out, "results.json")):
            sys.exit(f"run.py: {out} already holds a results.json: choose another --out (runs are never overwritten)")
        os.makedirs(out, exist_ok=True)
        return out
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H%M%S")
    base = os.path.join(HERE, "runs", f"{stamp}_{args.device}_{args.mode}")
    for n in range(1, 1000):
        out = base if n == 1 else f"{base}-{n}"
        try:
            os.makedirs(out)  # fails if it exists: two runs in the same second get -2, -3, ...
            return out
        except FileExistsError:
            continue
    sys.exit(f"run.py: could not make a new folder next to {base}")


class Progress:
    """One line that says which cell, which engine and what it is doing.  A tqdm bar on a terminal;
    elsewhere (a log file, a test) plain lines, one per engine and timing phase."""

    def __init__(self, total: int):
        self.bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, leave=False,
                                bar_format="{desc} |{bar}| {percentage:3.0f}% {elapsed}<{remaining}")
            except ImportError:
                pass

    def status(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(text, refresh=True)
        else:
            print(f"  .. {text}", flush=True)

    def step(self, k: int = 1) -> None:
        if self.bar is not None and k:
            self.bar.update(k)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class LibraryMessages:
    """Library warnings and log records, kept out of the console (where they would break the progress
    line: torch.utils.cpp_extension's "No CUDA runtime is found", ONNX export chatter) and written to
    log.txt, each distinct message once."""

    def __init__(self):
        self.messages: list[str] = []
        self._seen: set = set()
        self._saved = None

    def add(self, text: str) -> None:
        key = text.strip()
        if key and key not in self._seen:
            self._seen.add(key)
            self.messages.append(key)

    def __enter__(self):
        self._showwarning = warnings.showwarning
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: self.add(
            f"{category.__name__}: {message} ({os.path.basename(filename)}:{lineno})")
        self._filters = warnings.filters[:]
        warnings.simplefilter("default")  # each distinct warning once, not suppressed
        handler = logging.Handler(logging.WARNING)
        handler.emit = lambda record: self.add(f"{record.levelname} {record.name}: {record.getMessage()}")
        self._saved = []
        names = [""] + [n for n in logging.Logger.manager.loggerDict if n.split(".")[0] in
                        ("torch", "onnxruntime", "onnxscript", "onnx_ir", "openvino", "torchao", "root")]
        for name in names:
            logger = logging.getLogger(name)
            if isinstance(logger, logging.Logger) and (logger.handlers or name == ""):
                self._saved.append((logger, logger.handlers[:]))
                logger.handlers = [handler]
        return self

    def __exit__(self, *exc):
        warnings.showwarning = self._showwarning
        warnings.filters[:] = self._filters
        for logger, handlers in self._saved:
            logger.handlers = handlers
        return False


def _accuracy(outputs: torch.Tensor, expected: torch.Tensor) -> dict:
    outputs, expected = outputs.float().cpu(), expected.float().cpu()
    diff = (outputs - expected).abs().max().item()
    return {"max_abs_diff": diff, "rel_diff": diff / max(expected.abs().max().item(), 1e-30),
            "top1_agreement": (outputs.argmax(1) == expected.argmax(1)).float().mean().item(),
            "accuracy_images": expected.shape[0]}


def cell_steps(args) -> int:
    return len(args.engines) * len(args.threads) + args.repeats + 1


def _compile_skip(key, batch, args):
    """Why a compiling engine does not run in this cell (GPU check time bounds), or None."""
    if key not in E.COMPILING:
        return None
    if key == "compile_max" and args.max_autotune_batches is not None and batch not in args.max_autotune_batches:
        return f"not at batch {batch} (--max-autotune-batches {','.join(map(str, args.max_autotune_batches))})"
    if args.compile_budget_s is not None and args.compile_spent_s >= args.compile_budget_s:
        return f"the compile budget ({args.compile_budget_s:.0f} s, --compile-budget-s) is spent"
    return None


def measure_cell(index, arch, dtype, batch, args, models, progress):
    """Builds every engine at every thread count for one cell, checks its outputs, times them interleaved."""
    label = f"[{index + 1}/{args.n_cells}] {arch.capitalize()} {dtype} b{batch}"
    # Dynamo caches compiled graphs on the forward's code object, shared by every copy of the model: without a
    # reset, a cell's second batch size would get a dynamic-batch recompile (automatic dynamic shapes) instead
    # of the static graph a user gets, and past the recompile limit (8) torch.compile would silently run eagerly.
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, args.size, args.size, generator=g).to(args.device)
    chunks = [torch.randn(batch, 3, args.size, args.size, generator=g).to(args.device)
              for _ in range(max(1, math.ceil(ACCURACY_IMAGES / batch)))]
    if args.threads[0]:  # the reference at the first thread count, as every engine's accuracy check runs
        torch.set_num_threads(args.threads[0])
    with torch.inference_mode():
        expected = torch.cat([models.reference(c).float() for c in chunks])
    cell = {"index": index, "arch": arch, "dtype": dtype, "batch": batch, "size": args.size, "repeats": args.repeats,
            "skipped": []}
    built, rows = {}, []
    for key in args.engines:
        why = _compile_skip(key, batch, args)
        if why:
            cell["skipped"].append({"key": key, "engine": E.display_name(key, dtype), "reason": why})
            progress.step(len(args.threads))
            continue
        accuracy = None
        for ti, threads in enumerate(args.threads):
            what = E.display_name(key, dtype) + (f", {R.thread_label(threads)}" if threads else "")
            progress.status(f"{label}: building {what}")
            try:
                engine = E.build(key, models, dtype, threads, "max-autotune" if args.max_autotune else None)
                if engine is None:  # no such precision for this engine
                    progress.step(len(args.threads) - ti)
                    break
                if engine.prepare:
                    engine.prepare()
                if engine.first_call_message:
                    progress.status(f"{label}: {engine.first_call_message}"
                                    + (f", {R.thread_label(threads)}" if threads else "")
                                    + ": the first call takes a minute or more ...")
                start = time.perf_counter()
                (engine.first_call or engine.run)(x)  # the first call: compilation, allocator growth
                if args.device == "cuda":
                    torch.cuda.synchronize()
                first_call_s = time.perf_counter() - start
                if key in E.COMPILING:
                    args.compile_spent_s += first_call_s
                if accuracy is None:  # the same function at another thread count: checked once
                    progress.status(f"{label}: checking {what} against fp32 eager on {expected.shape[0]} images")
                    accuracy = _accuracy(torch.cat([engine.run(c).float() for c in chunks]), expected)
            except E.EngineUnavailable as exc:
                cell["skipped"].append({"key": key, "engine": E.display_name(key, dtype), "reason": str(exc)})
                progress.step(len(args.threads) - ti)
                break
            except Exception as exc:  # an engine that breaks must not take the table down with it
                cell["skipped"].append({"key": key, "engine": E.display_name(key, dtype),
                                        "reason": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"})
                progress.step(len(args.threads) - ti)
                break
            tag = f"{engine.name}@{threads}"
            built[tag] = engine
            rows.append(dict(tag=tag, engine=engine.name, key=key, precision=engine.precision, threads=threads,
                             first_call_s=first_call_s, setup_s=engine.setup_s, notes=engine.notes, **accuracy))
            # (mnv3_fast's own graphs are the fast_graphs engine: model.cuda_graphs(True))
            if args.device == "cuda" and batch == 1 and key in ("eager", "eager_cl") and not args.no_cuda_graphs:
                graphed = E.cuda_graph(engine, x)
                built[graphed.name + "@None"] = graphed
                rows.append(dict(rows[-1], tag=graphed.name + "@None", engine=graphed.name, notes=graphed.notes,
                                 first_call_s=0.0, setup_s=0.0))
            progress.step()
    if not built:
        cell["load"] = {}
        return cell, rows

    def on_round(i):
        progress.status(f"{label}: timing {len(built)} engine runs, interleaved, "
                        + ("warm-up done" if i == 0 else f"round {i}/{args.repeats}"))
        progress.step()

    progress.status(f"{label}: timing {len(built)} engine runs, warm-up")
    monitor = LoadMonitor()
    samples = time_interleaved({t: (lambda e=e: e.run(x)) for t, e in built.items()}, repeats=args.repeats,
                               warmup=args.warmup, device=args.device,
                               prepare={t: e.prepare for t, e in built.items() if e.prepare}, on_round=on_round)
    cell["load"] = monitor.stop()
    cell["disturbed"] = R.cell_disturbed(cell["load"])
    for row in rows:
        s = samples[row.pop("tag")]
        row.update(cell=index, arch=arch, dtype=dtype, batch=batch, samples_s=s, median_s=median(s), min_s=min(s),
                   max_s=max(s), images_per_s=batch / median(s), ms_per_image=median(s) / batch * 1e3,
                   min_ms_per_image=min(s) / batch * 1e3, max_ms_per_image=max(s) / batch * 1e3)
    eager = R.best_per_engine(rows).get("eager (NCHW)")
    for row in rows:
        row["speedup"] = eager["median_s"] / row["median_s"] if eager else None
    cell["standing"] = R.standing(cell, rows)
    return cell, rows


def console_header(env, args, load, out) -> str:
    threads = ", ".join(map(str, args.threads)) if args.threads[0] is not None else "torch default"
    kernels = ("C++ kernels loaded" if env.get("mnv3_cpu_kernels") else
               f"C++ KERNELS MISSING ({env.get('mnv3_extension_error')}): its rows time the PyTorch fallbacks")
    lines = [
        f"mnv3_fast benchmark ({args.mode} run{': a smoke test, not a measurement' if args.quick else ''})",
        f"  CPU       {env['cpu']} ({env.get('cpu_id') or 'identity unknown'}), {env['cpu_count']} cores"
        + (f", {env['usable_cores']} usable" if env.get("usable_cores", env["cpu_count"]) != env["cpu_count"] else ""),
        f"  ISA       {isa_summary(env.get('cpu_flags'))}; torch uses {env.get('cpu_capability')}",
    ]
    if env.get("gpu"):
        lines.append(f"  GPU       {env['gpu']}")
    lines += [
        f"  software  torch {env['torch']}" + "".join(f", {k} {env[k]}" for k in ("onnxruntime", "openvino", "torchao")
                                                       if k in env),
        f"  mnv3_fast {env.get('mnv3_fast')} from {env.get('mnv3_fast_path')}, {kernels}",
        f"  plan      {', '.join(a.capitalize() for a in args.arch)} x {', '.join(args.dtype)} x batch "
        f"{', '.join(map(str, args.batch))} x threads {threads}; {args.size}x{args.size}; {args.repeats} samples after "
        f"{args.warmup} warm-up; engines {', '.join(args.engines)}",
        f"  load      {R.load_summary({'before': load}, env['cpu_count']).split('. ')[0]}",
        f"  output    {out}",
    ]
    if (load.get("others_cores") or 0) > R.DISTURBED_OTHERS_CORES:
        lines.append(f"  !! the machine is busy before the start ({load['others_cores']:.2f} cores used by other "
                     "processes): timings will be noisy; compare engines within this run only")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available to torch")
    out = output_folder(args)
    env = environment(args.device)
    env.update(mode=args.mode, threads=args.threads, args={k: v for k, v in vars(args).items()})
    load = {"before": machine_load(1.0)}
    print(console_header(env, args, load["before"], out), flush=True)
    cells = [(a, d, b) for a in args.arch for d in args.dtype for b in args.batch]
    args.n_cells = len(cells)
    results = {"environment": env, "load": load, "cells": [], "rows": []}
    progress = Progress(len(cells) * cell_steps(args))
    interrupted = False
    start = time.perf_counter()
    with LibraryMessages() as messages:
        try:
            index = 0
            for arch in args.arch:
                progress.status(f"{arch.capitalize()}: weights (BN calibration) and calibration batches")
                models = E.Models(arch, args.device, args.size)
                for dtype in args.dtype:
                    for batch in args.batch:
                        cell, rows = measure_cell(index, arch, dtype, batch, args, models, progress)
                        index += 1
                        results["cells"].append(cell)
                        results["rows"] += rows
                        if rows:
                            progress.write(R.console_cell(cell, rows, args.threads, env["cpu_count"]))
                        else:
                            progress.write(f"\n{R.cell_title(cell)}: no engine ran: "
                                           + "; ".join(f"{s['engine']}: {s['reason']}" for s in cell["skipped"]))
                        R.write_text(os.path.join(out, "results.json"), json.dumps(results, indent=1))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            progress.close()
    env["wall_s"] = round(time.perf_counter() - start, 1)
    load["after"] = machine_load(0.5)
    load["warnings"] = [f"{R.cell_title(c)}: {R.load_note(c['load'], env['cpu_count'])} while timed."
                        for c in results["cells"] if c.get("disturbed")]
    if (load["before"].get("others_cores") or 0) > R.DISTURBED_OTHERS_CORES:
        load["warnings"].insert(0, f"Before the start, other processes used {load['before']['others_cores']:.2f} cores.")
    load["disturbed"] = bool(load["warnings"])
    load["threshold_cores"] = R.DISTURBED_OTHERS_CORES
    env["interrupted"] = interrupted
    env["library_messages"] = len(messages.messages)
    R.write_text(os.path.join(out, "results.json"), json.dumps(results, indent=1))
    R.write_text(os.path.join(out, "results.md"), R.markdown(results, args))
    R.write_text(os.path.join(out, "log.txt"), "\n".join(messages.messages) + "\n")
    no_chart = R.plot(results, os.path.join(out, "results.png"), args)

    print("\nStanding (each engine at its best thread count):")
    for c in results["cells"]:
        if c.get("standing"):
            print(f"  {R.cell_title(c)}: {c['standing']['verdict']}")
    if load["disturbed"]:
        print("!! The run was disturbed by other processes; its numbers are noisy:")
        for w in load["warnings"]:
            print(f"   {w}")
    if interrupted:
        print("!! Interrupted: the files hold the cells that finished.")
    if no_chart:
        print(no_chart)
    print(f"{len(messages.messages)} library warnings/log messages in log.txt; took {env['wall_s'] / 60:.1f} min")
    print(f"written to {out}")
    return results


if __name__ == "__main__":
    main()
