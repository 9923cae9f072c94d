"""fast and openvino at 1 and 2 threads, interleaved alone.  python quad.py large bf16"""
import os, sys, torch, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
import engines as E
from _timing import time_interleaved
models = E.Models(sys.argv[1], "cpu")
dt = sys.argv[2]
x = torch.randn(int(sys.argv[3]) if len(sys.argv) > 3 else 1, 3, 224, 224)
engs = {f"{k}@{t}": E.build(k, models, dt, t) for k in ("fast", "openvino") for t in (1, 2)}
fns = {k: (lambda e=e: e.run(x)) for k, e in engs.items()}
prep = {k: (lambda t=int(k[-1]): torch.set_num_threads(t)) for k in engs}
time_interleaved(fns, repeats=2, prepare=prep)
for _ in range(2):
    res = time_interleaved(fns, repeats=7, prepare=prep)
    print(os.getloadavg()[0], {k: round(statistics.median(v) * 1e3, 2) for k, v in res.items()}, flush=True)
