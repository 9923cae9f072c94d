"""Two versions of mnv3_fast, timed alternately in fresh processes on the same machine: a refactor's
"no slowdown" check (issue 11).

    git worktree add /tmp/old <commit> && (cd /tmp/old && python setup.py build_ext --inplace)
    python benchmarks/before_after.py --old /tmp/old --rounds 3

Each round runs one process per version (old first in odd rounds, new first in even ones), each timing
the fast model's eval forward in --dtype (float32 or bfloat16; channels_last input, BN-calibrated random
weights) for Large and Small at batch 1 and 32: medians of --repeats samples after warm-up, in ms per image.  The new
version is also timed with its adaptive thread choice off (`cpu_adaptive_threads = False`), which
isolates the restructure from that feature.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, statistics, sys, time, torch
import mnv3_fast
from mnv3_fast import reference
torch.set_num_threads(int(sys.argv[1]))
repeats, adaptive, dtype = int(sys.argv[2]), sys.argv[3], getattr(torch, sys.argv[4])
out = {}
for arch in ("LARGE", "SMALL"):
    torch.manual_seed(0)
    ref = reference.MobileNetV3(arch)
    with torch.no_grad():  # BN statistics from random batches (the same in both versions)
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        ref.train()(torch.randn(4, 3, 128, 128, generator=torch.Generator().manual_seed(0)))
    model = mnv3_fast.convert(ref.eval()).to(dtype)
    if adaptive != "default":
        model.cpu_adaptive_threads = adaptive == "on"
    for batch in (1, 32):
        x = torch.randn(batch, 3, 224, 224).to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            for _ in range(3):
                model(x)
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                for _ in range(max(1, 8 // batch)):
                    model(x)
                samples.append((time.perf_counter() - start) / max(1, 8 // batch) / batch * 1e3)
        out[f"{arch.capitalize()} b{batch}"] = statistics.median(samples)
print(json.dumps(out))
"""


def run(tree: str, threads: int, repeats: int, adaptive: str, dtype: str) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    result = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(repeats), adaptive, dtype], env=env, cwd=tree,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", required=True, help="checkout of the old version, its extension built in place")
    p.add_argument("--new", default=ROOT)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--json", default=None, help="write every round's numbers here")
    args = p.parse_args(argv)
    versions = {"old": (args.old, "default"), "new": (args.new, "on"), "new, adaptive threads off": (args.new, "off")}
    rounds = []
    for r in range(args.rounds):
        order = list(versions) if r % 2 == 0 else list(reversed(versions))
        rounds.append({name: run(versions[name][0], args.threads, args.repeats, versions[name][1], args.dtype) for name in order})
        print(f"round {r + 1}: " + json.dumps(rounds[-1]), flush=True)
    cells = list(rounds[0]["old"])
    print(f"\nms per image, {args.dtype}, median over {args.rounds} rounds (min-max); {args.threads} threads\n")
    print("| cell | " + " | ".join(versions) + " | new / old |")
    print("|---|" + "---|" * (len(versions) + 1))
    for cell in cells:
        values = {v: [rd[v][cell] for rd in rounds] for v in versions}
        med = {v: statistics.median(xs) for v, xs in values.items()}
        row = " | ".join(f"{med[v]:.2f} ({min(values[v]):.2f}-{max(values[v]):.2f})" for v in versions)
        print(f"| {cell} | {row} | {med['new'] / med['old']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "dtype": args.dtype, "rounds": rounds}, f, indent=1)


if __name__ == "__main__":
    main()
