"""A DRAM-traffic and launch model of MobileNetV3 inference on a GPU, per image, for three designs:

* eager PyTorch: every aten op of the reference model (conv, BN, activation, pool, SE's ops,
  residual add, linear) as one kernel that reads its inputs from and writes its outputs to DRAM;
  counted by running the model under a dispatch mode on meta tensors.  Two variants: with
  torchvision's activations (nn.Hardswish, one kernel) and as this project's reference model
  computes them (x * relu6(x + 3) / 6: four kernels; benchmarks/run.py's "eager" engine);
* this backend: the launches its CUDA program actually makes (mnv3_fast/backends/cuda/program.py),
  recorded without running anything, each reading and writing its tensor arguments once;
* an ideal block-fused design: each inverted-residual block one kernel that reads its input and
  writes its output (the expanded activations stay on chip), an SE block two (the pool is a
  grid-wide dependency: one pass for the pool sums, then the gate, a recompute of expand and
  depthwise, the gated projection and the residual), the last stage with its pooling and the
  head, weights read once; and the same with SE blocks storing their depthwise output between
  the two kernels instead of recomputing it ("ideal, SE stored").

    python benchmarks/gpu_model.py                      # Large and Small, fp16, batch 1 and 256
    python benchmarks/gpu_model.py --per-launch --model large --batch 256   # the backend's launches

Assumptions (a model, not a measurement): every tensor an op touches moves through DRAM once
(no L2 reuse between ops; at batch 1 the ~50-60 MB L2 of an H100/H200 holds most activations,
so small batches move less than this); a kernel's re-reads of a tile (a GEMM's A for several
output-channel blocks, a depthwise input halo) hit L2; weights are read once per forward, so per
image they are divided by the batch.  The throughput ceiling is bandwidth / bytes per image
(default 4.3 TB/s, the H200's measured copy rate); it ignores launch latency, which bounds small
batches instead (launches x a few microseconds without CUDA graphs).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mnv3_fast import reference  # noqa: E402
from mnv3_fast.ops._checks import conv_output_size  # noqa: E402
from mnv3_fast.plan import build_plan  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
SIZE = 224
BANDWIDTH = 4.3e12  # bytes/s: H200, measured copy rate


class Traffic(NamedTuple):
    activation_bytes: float  # per image
    weight_bytes: float  # per forward (shared by the batch)
    launches: int  # per forward

    def per_image(self, batch: int) -> float:
        return self.activation_bytes + self.weight_bytes / batch


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


# ------------------------------------------------------------------ eager PyTorch

_NO_KERNEL = {"view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "as_strided", "detach",
              "alias", "flatten", "squeeze", "unsqueeze", "empty", "empty_like", "empty_strided", "select", "slice",
              "_to_copy_noop"}


class _Count(TorchDispatchMode):
    def __init__(self, weights: set):
        super().__init__()
        self.weights, self.ops = weights, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in _NO_KERNEL:
            inputs = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
            outputs = [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
            weight = sum(_nbytes(t) for t in inputs if id(t) in self.weights)
            act = sum(_nbytes(t) for t in inputs if id(t) not in self.weights) + sum(_nbytes(o) for o in outputs)
            self.ops.append((name, act, weight))
        return out


def _torchvision_activations(model: torch.nn.Module) -> torch.nn.Module:
    """The reference with nn.Hardswish / nn.Hardsigmoid (one kernel each, as torchvision's model)
    in place of its explicit x * relu6(x + 3) / 6 (four)."""
    for name, child in model.named_children():
        if isinstance(child, reference.model.HSwish):
            setattr(model, name, torch.nn.Hardswish())
        elif isinstance(child, reference.model.HSigmoid):
            setattr(model, name, torch.nn.Hardsigmoid())
        else:
            _torchvision_activations(child)
    return model


def eager(mode: str, dtype: torch.dtype, batch: int = 1, torchvision: bool = True) -> tuple[Traffic, list]:
    """Eager PyTorch's aten ops on the reference model (the paper's network); with `torchvision`,
    its activations as torchvision's single-kernel modules (else as this project's reference
    model computes them, four elementwise kernels each: what benchmarks/run.py's "eager" runs)."""
    model = reference.MobileNetV3(mode).eval()
    if torchvision:
        model = _torchvision_activations(model)
    model = model.to(device="meta", dtype=dtype)
    weights = {id(t) for t in list(model.parameters()) + list(model.buffers())}
    counter = _Count(weights)
    with torch.no_grad(), counter:
        model(torch.empty(batch, 3, SIZE, SIZE, device="meta", dtype=dtype))
    act = sum(a for _, a, _ in counter.ops) / batch
    return Traffic(act, sum(w for _, _, w in counter.ops), len(counter.ops)), counter.ops


# ------------------------------------------------------------------ this backend


def backend(mode: str, dtype: torch.dtype, batch: int = 1) -> tuple[Traffic, list]:
    """The CUDA program's launches for a forward (recorded: nothing compiles or runs), each moving
    the unique tensors among its arguments once."""
    from mnv3_fast.backends.cuda import program as P
    from mnv3_fast.ops.triton import aot

    with torch.no_grad():
        prog = P.prepare(build_plan(reference.MobileNetV3(mode).eval()), dtype)
    weights = {t.data_ptr() for t in torch.utils._pytree.tree_leaves(tuple(prog)) if isinstance(t, torch.Tensor)}
    with aot.record_launches() as launches:
        P.forward(prog, torch.empty(batch, 3, SIZE, SIZE, dtype=dtype))
    rows = []
    for launch in launches:
        tensors = {}
        for a in launch.args:  # (placeholders for absent operands alias a real argument: counted once)
            if isinstance(a, torch.Tensor):
                tensors[(a.data_ptr(), a.untyped_storage().nbytes())] = a
        weight = sum(_nbytes(t) for t in tensors.values() if t.data_ptr() in weights)
        act = sum(_nbytes(t) for t in tensors.values() if t.data_ptr() not in weights)
        rows.append((launch.name, act, weight))
    return Traffic(sum(a for _, a, _ in rows) / batch, sum(w for _, _, w in rows), len(rows)), rows


# ------------------------------------------------------------------ ideal block-fused


def ideal(mode: str, dtype: torch.dtype, batch: int = 1, recompute: bool = True) -> tuple[Traffic, list]:
    """Each block one kernel (two with SE), from the folded plan's shapes.  An SE block's second
    kernel recomputes expand and depthwise from the block input (`recompute`), or reads the
    depthwise output the first kernel stored (the expanded width, 3-6x the input's)."""
    plan = build_plan(reference.MobileNetV3(mode).eval())
    e = torch.tensor([], dtype=dtype).element_size()
    weights = sum(_nbytes(t) for t in torch.utils._pytree.tree_leaves(tuple(plan)) if isinstance(t, torch.Tensor))
    weights = weights // 4 * e  # the plan is fp32
    rows = []
    h = conv_output_size(SIZE, plan.stem.weight.shape[-1], plan.stem.stride, plan.stem.padding)
    c = plan.stem.weight.shape[0]
    rows.append(("stem", (3 * SIZE * SIZE + c * h * h) * e))
    for i, b in enumerate(plan.blocks):
        d = b.depthwise
        ho = conv_output_size(h, d.weight.shape[-1], d.stride, d.padding, d.dilation)
        cout = b.project.weight.shape[0]
        block_in, block_out = c * h * h * e, cout * ho * ho * e
        if b.se is None:
            rows.append((f"block {i}", block_in + block_out))
        elif recompute:  # pass 1: expand + dw + pool sums; pass 2: gate, recompute, gated project, residual
            rows.append((f"block {i} pool", block_in))
            rows.append((f"block {i} project", block_in + block_out))
        else:  # pass 1: expand + dw (stored) + pool sums; pass 2: gate, gated project, residual
            dw_out = d.weight.shape[0] * ho * ho * e
            rows.append((f"block {i} expand+dw", block_in + dw_out))
            rows.append((f"block {i} project", dw_out + block_out + (block_in if b.residual else 0)))
        c, h = cout, ho
    rows.append(("last stage + pool", c * h * h * e + plan.last.conv.weight.shape[0] * e))
    rows.append(("head", plan.last.conv.weight.shape[0] * e + plan.classifier.weight.shape[0] * e))
    return Traffic(sum(b for _, b in rows), weights, len(rows)), rows


MODELS = {"eager (torchvision)": eager, "eager (reference)": lambda m, d, b=1: eager(m, d, b, torchvision=False),
          "this backend": backend, "ideal block-fused": ideal,
          "ideal, SE stored": lambda m, d, b=1: ideal(m, d, b, recompute=False)}


def report(models, dtype_name: str, batches, bandwidth: float) -> list[dict]:
    rows = []
    for mode in models:
        for design, fn in MODELS.items():
            traffic, _ = fn(mode, DTYPES[dtype_name])
            for batch in batches:
                per_image = traffic.per_image(batch)
                rows.append(dict(model=mode.lower(), dtype=dtype_name, design=design, batch=batch,
                                 mb_per_image=per_image / 1e6, weights_mb=traffic.weight_bytes / 1e6,
                                 launches=traffic.launches, images_per_s=bandwidth / per_image,
                                 us_per_image=per_image / bandwidth * 1e6))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="large,small")
    parser.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    parser.add_argument("--batch", default="1,256")
    parser.add_argument("--bandwidth", type=float, default=BANDWIDTH, help="bytes/s (default 4.3e12, H200 copy)")
    parser.add_argument("--per-launch", action="store_true", help="list the backend's launches with their bytes")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    models = [m.upper() for m in args.model.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    if args.per_launch:
        for mode in models:
            for batch in batches:
                traffic, rows = backend(mode, DTYPES[args.dtype], batch)
                print(f"\n{mode.lower()} {args.dtype} batch {batch}: {traffic.launches} launches")
                print(f"{'#':>3}  {'kernel':<16} {'MB':>9}  {'us at bandwidth':>15}")
                for i, (name, act, weight) in enumerate(rows):
                    print(f"{i:>3}  {name:<16} {(act + weight) / 1e6:>9.3f}  {(act + weight) / args.bandwidth * 1e6:>15.2f}")
        return 0
    rows = report(models, args.dtype, batches, args.bandwidth)
    print(f"DRAM traffic model, {args.dtype}, 224x224, per image; ceiling at {args.bandwidth / 1e12:.1f} TB/s")
    print(f"{'model':<6} {'design':<19} {'batch':>5} {'MB/image':>9} {'weights MB':>10} {'launches':>8} "
          f"{'ceiling img/s':>13} {'us/image':>8}")
    for r in rows:
        print(f"{r['model']:<6} {r['design']:<19} {r['batch']:>5} {r['mb_per_image']:>9.2f} {r['weights_mb']:>10.2f} "
              f"{r['launches']:>8} {r['images_per_s']:>13,.0f} {r['us_per_image']:>8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
