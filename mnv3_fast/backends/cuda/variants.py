"""Every Triton kernel variant the CUDA backend launches, compiled for real (no GPU needed).

    python -m mnv3_fast.backends.cuda.variants --arch 80,90 [--json out.json]

runs the backend's own program (the forward and the stages, as `forward_features` and
`feature_maps` run them) for MobileNetV3 Large and Small at 224x224, batch 1 and 256, in
fp16, bf16 and fp32, on CPU tensors with triton's compiler behind a stand-in driver
(`mnv3_fast.ops.triton.aot`): each launch compiles for the target and runs nothing.  So the
variants are exactly those the backend picks (tiles, constexprs, argument specialisation),
not a hand-kept list.  It prints (or writes as JSON) each distinct compiled kernel with its
registers, stack (spill) bytes and shared memory, read off the cubin.  The Triton
interpreter must be off (it is, unless TRITON_INTERPRET=1 is set).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

MODELS = ("LARGE", "SMALL")
BATCHES = (1, 256)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
SIZE = 224


def programs(modes=MODELS, dtypes=DTYPES):
    """(mode, dtype name, prepared program) for each model and dtype (random weights: the
    variants depend on shapes and dtypes only)."""
    from ... import reference
    from ...model import build_plan
    from .program import prepare

    for mode in modes:
        with torch.no_grad():
            plan = build_plan(reference.MobileNetV3(mode).eval())
        for name, dtype in dtypes.items():
            yield mode, name, prepare(plan, dtype)


def record(arch: int, modes=MODELS, batches=BATCHES, dtypes=DTYPES) -> list[dict]:
    """Compiles every launch of the backend for sm_<arch>; one row per distinct compiled kernel,
    with the (model, batch, dtype) cases that launch it."""
    from ...ops.triton import aot
    from . import program as P

    rows: dict = {}
    for mode, dtype_name, prog in programs(modes, dtypes):
        for batch in batches:
            x = torch.empty((batch, 3, SIZE, SIZE), dtype=prog.dtype)
            with aot.compile_only(arch) as launches:
                P.forward(prog, x)
                for _ in P.stages(prog, x):
                    pass
            for launch in launches:
                k = launch.kernel
                row = rows.get(k.hash)
                if row is None:
                    res = aot.resources(k)
                    row = rows[k.hash] = dict(
                        kernel=k.name, arch=arch, registers=res.registers, spill_bytes=res.stack,
                        shared_bytes=res.shared, num_warps=res.num_warps,
                        constexprs={n: v for n, v in aot.constexprs(k).items() if n.isupper()}, cases=[])
                case = f"{mode.lower()} b{batch} {dtype_name}"
                if case not in row["cases"]:
                    row["cases"].append(case)
    return list(rows.values())


def table(rows: list[dict]) -> str:
    """A text table: one line per kernel variant (summary per kernel first)."""
    import triton

    lines = [f"triton {triton.__version__}", "", "kernel            arch  variants  max regs  max spill B  max smem B"]
    by_kernel: dict = {}
    for r in rows:
        by_kernel.setdefault((r["kernel"], r["arch"]), []).append(r)
    for (name, arch), rs in sorted(by_kernel.items()):
        lines.append(f"{name:<17} sm_{arch}  {len(rs):>8}  {max(r['registers'] for r in rs):>8}  "
                     f"{max(r['spill_bytes'] for r in rs):>11}  {max(r['shared_bytes'] for r in rs):>10}")
    lines += ["", "kernel            arch  regs  spill  smem   warps  constexprs  (cases)"]
    for r in sorted(rows, key=lambda r: (r["kernel"], r["arch"], -r["registers"])):
        consts = " ".join(f"{k}={v}" for k, v in r["constexprs"].items())
        lines.append(f"{r['kernel']:<17} sm_{r['arch']}  {r['registers']:>4}  {r['spill_bytes']:>5}  "
                     f"{r['shared_bytes']:>6}  {r['num_warps']:>5}  {consts}  ({', '.join(r['cases'])})")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="80,90", help="compute capabilities, e.g. 80,90")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--json", help="write the rows here (else print the table)")
    args = parser.parse_args(argv)
    import triton

    start = time.time()
    rows = []
    for arch in (int(a) for a in args.arch.split(",")):
        rows += record(arch, args.models.upper().split(","), [int(b) for b in args.batches.split(",")],
                       {d: DTYPES[d] for d in args.dtypes.split(",")})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(triton=triton.__version__, seconds=time.time() - start, rows=rows), f, indent=1)
    else:
        print(table(rows))
        print(f"\n{len(rows)} variants in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
