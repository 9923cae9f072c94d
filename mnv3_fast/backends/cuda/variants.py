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
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional

import torch

MODELS = ("LARGE", "SMALL")
BATCHES = (1, 256)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
SIZE = 224


def programs(modes=MODELS, dtypes=DTYPES):
    """(mode, dtype name, prepared program) for each model and dtype (random weights: the
    variants depend on shapes and dtypes only)."""
    from ... import reference
    from ...plan import build_plan
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


def table(rows: list[dict], triton_version: str) -> str:
    """A text table: one line per kernel variant (summary per kernel first)."""
    lines = [f"triton {triton_version}", "", "kernel            arch  variants  max regs  max spill B  max smem B"]
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


# ------------------------------------------------------------------ another triton, in a subprocess

#: The triton the GPU machine has (the AOT checks compile with it as well as with the installed one).
GPU_MACHINE_TRITON = "3.6.0"


def triton_dir(version: str, cache: Optional[str] = None) -> str:
    """A directory holding triton==`version` (for PYTHONPATH), installed there by pip on first use:
    $MNV3_TRITON_<major>_<minor>_DIR if set, else ~/.cache/mnv3_fast/triton-<version>."""
    env = os.environ.get("MNV3_TRITON_" + "_".join(version.split(".")[:2]) + "_DIR")
    if env:
        return env
    cache = cache or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mnv3_fast")
    target = os.path.join(cache, f"triton-{version}")
    if not os.path.isdir(os.path.join(target, "triton")):
        tmp = target + f".tmp{os.getpid()}"
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", tmp,
                               f"triton=={version}"], capture_output=True, text=True, timeout=900)
        if proc.returncode:
            raise RuntimeError(f"pip could not install triton=={version} into {tmp}:\n{proc.stdout}{proc.stderr}")
        os.makedirs(cache, exist_ok=True)
        if not os.path.isdir(os.path.join(target, "triton")):
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        else:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def run_subprocess(triton_path: Optional[str] = None, args=(), timeout: int = 1800) -> dict:
    """Runs this module in a fresh interpreter (the Triton interpreter off; with `triton_path` first
    on sys.path, so that triton is imported from there) and returns its JSON."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (triton_path, repo, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "variants.json")
        proc = subprocess.run([sys.executable, "-m", "mnv3_fast.backends.cuda.variants", "--json", out, *args],
                              env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode:
            raise RuntimeError(f"the AOT compile failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}"
                               f"{proc.stderr[-8000:]}")
        with open(out) as f:
            return json.load(f)


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
        print(table(rows, triton.__version__))
        print(f"\n{len(rows)} variants in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
