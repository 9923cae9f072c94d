"""Where the time goes: a torch.profiler breakdown of one model's inference, per op kind.

    python benchmarks/profile_model.py --arch large --batch 1 --engine fast [--dtype bf16|int8]
    python benchmarks/profile_model.py --arch large --batch 32 --engine eager --out benchmarks/results/...

Prints (and with --out writes profile-<arch>-b<batch>-<engine>.md) the self CPU
time of each op kind over --iters forward passes, after warm-up.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import engines as E  # noqa: E402
from _timing import environment  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="large", choices=["large", "small"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--engine", default="fast", choices=["fast", "fast_cl", "eager", "eager_cl"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "int8"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    models = E.Models(args.arch, "cpu")
    engine = E.build(args.engine, models, args.dtype, args.threads)
    x = torch.randn(args.batch, 3, 224, 224)  # each engine casts it to its precision
    for _ in range(3):
        engine.run(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.iters):
            engine.run(x)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    env = environment()
    lines = [f"# {engine.name}, MobileNetV3-{args.arch.capitalize()}, {args.dtype}, batch {args.batch}, "
             f"{args.threads} threads", "",
             f"{env['cpu']}, torch {env['torch']}, {env['date']}; `{env['command']}`; self CPU time over "
             f"{args.iters} forward passes, {total / args.iters / 1e3:.2f} ms per pass.", "",
             "| op | calls per pass | ms per pass | share |", "|---|---|---|---|"]
    for e in events:
        if e.self_cpu_time_total / total < 0.005:
            continue
        lines.append(f"| {e.key} | {e.count / args.iters:.0f} | {e.self_cpu_time_total / args.iters / 1e3:.3f} | "
                     f"{e.self_cpu_time_total / total:.1%} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"profile-{args.arch}-{args.dtype}-b{args.batch}-{args.engine}.md"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
