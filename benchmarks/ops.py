"""Times each fused op against the eager PyTorch chain it replaces, on the real
layer shapes of MobileNetV3-Large at 224x224.

    python benchmarks/ops.py                      # batch 1 and 32, NCHW and channels_last, 2 threads
    python benchmarks/ops.py --runs 3             # repeat the whole sweep to see the spread
    python benchmarks/ops.py --batch 1 --formats channels_last --quick

Writes ops.json and ops.md to --out (default benchmarks/results/<date>-cpu-ops/).
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


def dw_pair(C, k, stride, act, x):
    g = torch.Generator().manual_seed(C)
    weight = torch.randn(C, 1, k, k, generator=g) * 0.2
    mean, var = torch.randn(C, generator=g) * 0.1, torch.rand(C, generator=g) + 0.5
    gamma, beta = torch.rand(C, generator=g) + 0.5, torch.randn(C, generator=g) * 0.1
    pad = (k - 1) // 2
    act_fn = F.relu if act == "relu" else F.hardswish

    def eager():
        y = F.conv2d(x, weight, None, stride, pad, 1, C)
        return act_fn(F.batch_norm(y, mean, var, gamma, beta, False, 0.0, 1e-3))

    scale = gamma / torch.sqrt(var + 1e-3)
    w_folded, b_folded = weight * scale[:, None, None, None], beta - mean * scale

    def fused():
        return ops.dw_conv_bn_act(x, w_folded, b_folded, stride, pad, 1, act)

    torch.testing.assert_close(fused(), eager(), rtol=1e-4, atol=1e-4)
    return eager, fused


def se_pair(C, S, x):
    g = torch.Generator().manual_seed(C + S)
    w1, b1 = torch.randn(S, C, 1, 1, generator=g) * C**-0.5, torch.randn(S, generator=g) * 0.1
    w2, b2 = torch.randn(C, S, 1, 1, generator=g) * S**-0.5, torch.randn(C, generator=g) * 0.1

    def eager():
        pooled = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(F.conv2d(F.relu(F.conv2d(pooled, w1, b1)), w2, b2))

    def fused():
        return ops.squeeze_excite(x, w1, b1, w2, b2)

    torch.testing.assert_close(fused(), eager(), rtol=1e-4, atol=1e-4)
    return eager, fused


def run_sweep(batches, formats, repeats):
    rows = []
    for kind, C, p, stride, act, H in large_layer_shapes():
        for batch in batches:
            for fmt in formats:
                x = torch.randn(batch, C, H, H).contiguous(memory_format=FORMATS[fmt])
                eager, fused = dw_pair(C, p, stride, act, x) if kind == "dw_conv_bn_act" else se_pair(C, p, x)
                with torch.inference_mode():
                    t = time_interleaved({"eager": eager, "fused": fused}, repeats=repeats)
                layer = f"C{C} k{p} s{stride} {act}" if kind == "dw_conv_bn_act" else f"C{C} S{p}"
                rows.append(dict(op=kind, layer=layer, H=H, batch=batch, format=fmt,
                                 eager_s=t["eager"], fused_s=t["fused"],
                                 speedup=median(t["eager"]) / median(t["fused"])))
                print(f"{kind:15s} {layer:22s} {H:4d}px b{batch:<3d} {fmt:14s} eager {median(t['eager'])*1e3:8.3f} ms"
                      f"  fused {median(t['fused'])*1e3:8.3f} ms  x{rows[-1]['speedup']:.2f}", flush=True)
    return rows


def markdown(runs, env):
    """One table: per layer, the median speed-up of each run and the min-max across runs."""
    lines = [f"# Fused ops vs eager chains, MobileNetV3-Large layers at 224x224, fp32, {env['torch_threads']} threads",
             "", f"Machine: {env['cpu']} ({env['cpu_count']} cores, torch {env['torch']}, {env['cpu_capability']}), "
             f"{env['date']}. Command: `{env['command']}`. {len(runs)} run(s); each cell is the median over "
             "interleaved repeats; the speed-up range is min-max across runs.", "",
             "| op | layer | H | batch | format | eager ms | fused ms | speed-up (range) |", "|---|---|---|---|---|---|---|---|"]
    for i, row in enumerate(runs[0]):
        ups = [run[i]["speedup"] for run in runs]
        lines.append(f"| {row['op']} | {row['layer']} | {row['H']} | {row['batch']} | {row['format']} | "
                     f"{median(row['eager_s'])*1e3:.3f} | {median(row['fused_s'])*1e3:.3f} | "
                     f"{statistics.median(ups):.2f}x ({min(ups):.2f}-{max(ups):.2f}) |")
    lines.append("")
    lines.append("Median speed-up over layers (min-max across runs):")
    lines.append("")
    for op in ("dw_conv_bn_act", "squeeze_excite"):
        for batch in sorted({r["batch"] for r in runs[0]}):
            for fmt in sorted({r["format"] for r in runs[0]}):
                per_run = [statistics.median(r["speedup"] for r in run if (r["op"], r["batch"], r["format"]) == (op, batch, fmt))
                           for run in runs]
                lines.append(f"- {op}, batch {batch}, {fmt}: {statistics.median(per_run):.2f}x "
                             f"({min(per_run):.2f}-{max(per_run):.2f}); slowest layer "
                             f"{min(min(r['speedup'] for r in run if (r['op'], r['batch'], r['format']) == (op, batch, fmt)) for run in runs):.2f}x")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--formats", default="nchw,channels_last", help="nchw and/or channels_last")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole sweep to measure the spread")
    parser.add_argument("--quick", action="store_true", help="5 repeats, for a smoke test")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not ops.HAS_CPU_KERNELS:
        sys.exit(f"the C++ kernels are not loaded ({ops.EXTENSION_ERROR}); nothing to benchmark")
    batches = [int(b) for b in args.batch.split(",")]
    formats = args.formats.split(",")
    repeats = 5 if args.quick else args.repeats
    runs = [run_sweep(batches, formats, repeats) for _ in range(args.runs)]
    env = environment()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"{datetime.date.today().isoformat()}-cpu-ops")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "ops.json"), "w") as f:
        json.dump({"environment": env, "runs": runs}, f, indent=1)
    table = markdown(runs, env)
    with open(os.path.join(out, "ops.md"), "w") as f:
        f.write(table)
    print(table)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
