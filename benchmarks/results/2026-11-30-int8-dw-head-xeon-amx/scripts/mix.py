"""fast@2 and openvino@2 (bf16 b1) interleaved alone, then with other engines in the rotation (1 and 2 threads).
    python mix.py large eager,compile"""
import os, sys, torch, time, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
import engines as E
from _timing import time_interleaved
models = E.Models(sys.argv[1], "cpu")
x = torch.randn(1, 3, 224, 224)
base = {"fast@2": E.build("fast", models, "bf16", 2), "openvino@2": E.build("openvino", models, "bf16", 2)}
extra = {k + "@" + str(t): E.build(k, models, "bf16", t) for k in sys.argv[2].split(",") for t in (1, 2)}
def run(engs, label):
    fns = {k: (lambda e=e: e.run(x)) for k, e in engs.items()}
    prep = {k: (lambda t=int(k[-1]): torch.set_num_threads(t)) for k in engs}
    time_interleaved(fns, repeats=2, prepare=prep)
    res = time_interleaved(fns, repeats=7, prepare=prep)
    print(label, {k: round(statistics.median(v) * 1e3, 2) for k, v in res.items()}, flush=True)
for _ in range(2):
    run(base, "alone   ")
    run({**base, **extra}, "with " + sys.argv[2])
