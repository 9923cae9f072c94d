"""Times each fused op against the eager PyTorch chain it replaces, on the real
layer shapes of MobileNetV3-Large at 224x224.

    python benchmarks/ops.py                      # CPU: batch 1 and 32, NCHW and channels_last, fp32, 2 threads
    python benchmarks/ops.py --runs 3             # repeat the whole sweep to see the spread
    python benchmarks/ops.py --device cuda --batch 1,256 --dtype fp16,fp32 --formats channels_last

On CUDA the eager chain is cuDNN's depthwise conv + batch_norm + activation,
and the table adds each depthwise layer's achieved bandwidth (input + output
bytes over time) as a fraction of a device-to-device copy's, measured in the
same run.  Writes ops.json and ops.md to --out (default
benchmarks/results/<date>-<device>-ops/).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import environment, median, time_interleaved  # noqa: E402

from mnv3_fast import ops  # noqa: E402
from mnv3_fast.config import build_config  # noqa: E402

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def large_layer_shapes(size: int = 224):
    """(kind, C, S_or_k, stride, act, H) for each distinct depthwise and SE layer of MobileNetV3-Large."""
    config = build_config("LARGE")
    h = (size + 1) // 2  # after the stride-2 stem
    layers = []
    for block in config.blocks:
        layers.append(("dw_conv_bn_act", block.expand_channels, block.kernel_size, block.stride, block.activation, h))
        h = (h + block.stride - 1) // block.stride
        if block.has_se:
            layers.append(("squeeze_excite", block.expand_channels, block.se_channels, 1, "", h))
    return list(dict.fromkeys(layers))  # repeated blocks once


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _params(x, *shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(*s, generator=g).to(device=x.device, dtype=x.dtype) for s in shapes]


def _check(fused, eager, x):
    tol = 1e-4 if x.dtype == torch.float32 and x.device.type == "cpu" else 5e-2  # TF32 / half precision on GPU
    torch.testing.assert_close(fused().float(), eager().float(), rtol=tol, atol=tol)


def dw_pair(C, k, stride, act, x):
    weight, mean, var, gamma, beta = _params(x, (C, 1, k, k), (C,), (C,), (C,), (C,), seed=C)
    weight, mean, var, gamma, beta = (weight - 0.5) * 0.4, (mean - 0.5) * 0.2, var + 0.5, gamma + 0.5, (beta - 0.5) * 0.2
    pad = (k - 1) // 2
    act_fn = F.relu if act == "relu" else F.hardswish

    def eager():
        y = F.conv2d(x, weight, None, stride, pad, 1, C)
        return act_fn(F.batch_norm(y, mean, var, gamma, beta, False, 0.0, 1e-3))

    scale = gamma / torch.sqrt(var + 1e-3)
    w_folded, b_folded = weight * scale[:, None, None, None], beta - mean * scale

    def fused():
        return ops.dw_conv_bn_act(x, w_folded, b_folded, stride, pad, 1, act)

    _check(fused, eager, x)
    return eager, fused


def se_pair(C, S, x):
    w1, b1, w2, b2 = _params(x, (S, C, 1, 1), (S,), (C, S, 1, 1), (C,), seed=C + S)
    w1, b1, w2, b2 = (w1 - 0.5) * 2 * C**-0.5, (b1 - 0.5) * 0.2, (w2 - 0.5) * 2 * S**-0.5, (b2 - 0.5) * 0.2

    def eager():
        pooled = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(F.conv2d(F.relu(F.conv2d(pooled, w1, b1)), w2, b2))

    def fused():
        return ops.squeeze_excite(x, w1, b1, w2, b2)

    _check(fused, eager, x)
    return eager, fused


def copy_bandwidth(device) -> float:
    """Bytes per second (read + written) of a large device-to-device copy."""
    src = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t = time_interleaved({"copy": lambda: dst.copy_(src)}, repeats=10, device=device)
    return 2 * src.numel() / median(t["copy"])


def run_sweep(batches, formats, dtypes, repeats, device, copy_bw=None):
    rows = []
    for kind, C, p, stride, act, H in large_layer_shapes():
        for batch in batches:
            for dtype in dtypes:
                for fmt in formats:
                    x = torch.randn(batch, C, H, H, device=device, dtype=DTYPES[dtype]).contiguous(memory_format=FORMATS[fmt])
                    eager, fused = dw_pair(C, p, stride, act, x) if kind == "dw_conv_bn_act" else se_pair(C, p, x)
                    with torch.inference_mode():
                        t = time_interleaved({"eager": eager, "fused": fused}, repeats=repeats, device=device)
                    layer = f"C{C} k{p} s{stride} {act}" if kind == "dw_conv_bn_act" else f"C{C} S{p}"
                    Ho = (H + stride - 1) // stride if kind == "dw_conv_bn_act" else H
                    moved = (x.numel() + batch * C * Ho * Ho) * x.element_size()
                    rows.append(dict(op=kind, layer=layer, H=H, batch=batch, dtype=dtype, format=fmt,
                                     eager_s=t["eager"], fused_s=t["fused"],
                                     speedup=median(t["eager"]) / median(t["fused"]),
                                     bandwidth_fraction=(moved / median(t["fused"]) / copy_bw) if copy_bw else None))
                    print(f"{kind:15s} {layer:22s} {H:4d}px b{batch:<3d} {dtype} {fmt:14s} "
                          f"eager {median(t['eager'])*1e3:8.3f} ms  fused {median(t['fused'])*1e3:8.3f} ms  "
                          f"x{rows[-1]['speedup']:.2f}", flush=True)
    return rows


def markdown(runs, env, copy_bw):
    """One table: per layer, the median speed-up of each run and the min-max across runs."""
    where = env.get("gpu") or f"{env['cpu']} ({env['cpu_count']} cores, {env['cpu_capability']}, {env['torch_threads']} threads)"
    lines = ["# Fused ops vs eager chains, MobileNetV3-Large layers at 224x224", "",
             f"Machine: {where}, torch {env['torch']}, {env['date']}. Command: `{env['command']}`. {len(runs)} run(s); "
             "each cell is the median over interleaved repeats; the speed-up range is min-max across runs."
             + (f" Device-to-device copy: {copy_bw / 1e9:.0f} GB/s." if copy_bw else ""), "",
             "| op | layer | H | batch | dtype | format | eager ms | fused ms | speed-up (range) |"
             + (" fused bandwidth / copy |" if copy_bw else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if copy_bw else "")]
    for i, row in enumerate(runs[0]):
        ups = [run[i]["speedup"] for run in runs]
        bw = ""
        if copy_bw:
            bw = f" {row['bandwidth_fraction']:.0%} |" if row["op"] == "dw_conv_bn_act" else " - |"
        lines.append(f"| {row['op']} | {row['layer']} | {row['H']} | {row['batch']} | {row['dtype']} | {row['format']} | "
                     f"{median(row['eager_s'])*1e3:.3f} | {median(row['fused_s'])*1e3:.3f} | "
                     f"{statistics.median(ups):.2f}x ({min(ups):.2f}-{max(ups):.2f}) |" + bw)
    lines += ["", "Median speed-up over layers (min-max across runs):", ""]
    cells = sorted({(r["op"], r["batch"], r["dtype"], r["format"]) for r in runs[0]})
    for cell in cells:
        per_run = [[r["speedup"] for r in run if (r["op"], r["batch"], r["dtype"], r["format"]) == cell] for run in runs]
        medians = [statistics.median(v) for v in per_run]
        lines.append(f"- {cell[0]}, batch {cell[1]}, {cell[2]}, {cell[3]}: {statistics.median(medians):.2f}x "
                     f"({min(medians):.2f}-{max(medians):.2f}); slowest layer {min(min(v) for v in per_run):.2f}x")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--dtype", default="fp32", help="comma-separated: fp32, fp16, bf16")
    parser.add_argument("--formats", default="nchw,channels_last", help="nchw and/or channels_last")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole sweep to measure the spread")
    parser.add_argument("--quick", action="store_true", help="5 repeats, for a smoke test")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cpu" and not ops.HAS_CPU_KERNELS:
        sys.exit(f"the C++ kernels are not loaded ({ops.EXTENSION_ERROR}); nothing to benchmark")
    if args.device == "cuda" and (not torch.cuda.is_available() or ops.TRITON_ERROR):
        sys.exit(f"no CUDA kernels to benchmark ({ops.TRITON_ERROR or 'no CUDA device'})")
    batches = [int(b) for b in args.batch.split(",")]
    formats = args.formats.split(",")
    dtypes = args.dtype.split(",")
    repeats = 5 if args.quick else args.repeats
    copy_bw = copy_bandwidth(args.device) if args.device == "cuda" else None
    runs = [run_sweep(batches, formats, dtypes, repeats, args.device, copy_bw) for _ in range(args.runs)]
    env = environment(args.device)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"{datetime.date.today().isoformat()}-{args.device}-ops")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "ops.json"), "w") as f:
        json.dump({"environment": env, "copy_bandwidth_Bps": copy_bw, "runs": runs}, f, indent=1)
    table = markdown(runs, env, copy_bw)
    with open(os.path.join(out, "ops.md"), "w") as f:
        f.write(table)
    print(table)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
