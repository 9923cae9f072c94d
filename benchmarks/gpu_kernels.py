"""Per-kernel GPU times of the CUDA backend's forward against the traffic model's bytes: the
fraction of the copy bandwidth each launch reaches (CUDA only).

    python benchmarks/gpu_kernels.py --model large,small --batch 256 --dtype fp16 --out DIR

For each (model, batch, dtype): a few profiled forwards (torch.profiler, CUDA activity) of a
channels_last model on the CUDA backend; the kernels of each forward in launch order, matched
one to one with the launches benchmarks/gpu_model.py records for the same program (the names
must agree, or the script says so); per launch the median time, the bytes the model says it
moves, and bytes / time as a fraction of --bandwidth (default 4.3 TB/s).  Writes kernels.json
and kernels.md to --out.  Without a GPU it stops with a message (--help works anywhere).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import gpu_model  # noqa: E402

KERNEL_NAMES = ("_stem_kernel", "_pw_kernel", "_dw_kernel", "_se_gate_kernel")


def profile(mode: str, batch: int, dtype: torch.dtype, iterations: int = 5) -> list[list[tuple[str, float]]]:
    """The backend's kernels per forward, in launch order: [(name, seconds)] per iteration."""
    import mnv3_fast
    from mnv3_fast import reference
    from mnv3_fast.testing import calibrate_bn_
    from torch.profiler import ProfilerActivity, profile as torch_profile

    model = mnv3_fast.convert(calibrate_bn_(reference.MobileNetV3(mode))).cuda().to(dtype)
    model = model.to(memory_format=torch.channels_last).eval()
    x = torch.randn(batch, 3, gpu_model.SIZE, gpu_model.SIZE, device="cuda", dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert model.explain(x).backend == "cuda", str(model.explain(x))
        for _ in range(3):  # compile and load every kernel, grow the allocator
            model(x)
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iterations):
                model(x)
            torch.cuda.synchronize()
    events = sorted((e for e in prof.events() if e.device_type.name == "CUDA" and e.name in KERNEL_NAMES),
                    key=lambda e: e.time_range.start)
    per = len(events) // iterations
    return [[(e.name, e.time_range.elapsed_us() * 1e-6) for e in events[i * per:(i + 1) * per]]
            for i in range(iterations)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="large,small")
    parser.add_argument("--batch", default="256")
    parser.add_argument("--dtype", default="fp16", choices=list(gpu_model.DTYPES))
    parser.add_argument("--bandwidth", type=float, default=gpu_model.BANDWIDTH)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_kernels.py: no CUDA device is available to torch")
    dtype = gpu_model.DTYPES[args.dtype]
    results, lines = [], []
    for mode in (m.upper() for m in args.model.split(",")):
        for batch in (int(b) for b in args.batch.split(",")):
            _, modelled = gpu_model.backend(mode, dtype, batch)
            runs = profile(mode, batch, dtype, args.iterations)
            names = [n for n, _ in runs[0]]
            if names != [n for n, _, _ in modelled]:
                lines.append(f"\n{mode.lower()} b{batch}: the profiled kernels ({len(names)}) do not match the modelled "
                             f"launches ({len(modelled)}); no per-kernel table")
                continue
            total_s = statistics.median(sum(t for _, t in run) for run in runs)
            total_bytes = sum(a + w for _, a, w in modelled)
            lines += [f"\n### {mode.capitalize()}, batch {batch}, {args.dtype}: {len(names)} kernels, "
                      f"{total_s * 1e3:.3f} ms of kernel time per forward, {total_bytes / total_s / 1e12:.2f} TB/s "
                      f"({total_bytes / total_s / args.bandwidth:.0%} of {args.bandwidth / 1e12:.1f})", "",
                      "| # | kernel | us | MB (model) | TB/s | of copy bandwidth |", "|---|---|---|---|---|---|"]
            for i, (name, act, weight) in enumerate(modelled):
                t = statistics.median(run[i][1] for run in runs)
                moved = act + weight
                results.append(dict(model=mode.lower(), batch=batch, dtype=args.dtype, index=i, kernel=name,
                                    seconds=t, bytes=moved, fraction=moved / t / args.bandwidth))
                lines.append(f"| {i} | {name} | {t * 1e6:.1f} | {moved / 1e6:.3f} | {moved / t / 1e12:.2f} | "
                             f"{moved / t / args.bandwidth:.0%} |")
    text = (f"# The CUDA backend's kernels against the traffic model ({torch.cuda.get_device_name()})\n\n"
            f"Bytes from benchmarks/gpu_model.py (each tensor argument moved once); times: median of "
            f"{args.iterations} profiled forwards.\n" + "\n".join(lines) + "\n")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kernels.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "kernels.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
