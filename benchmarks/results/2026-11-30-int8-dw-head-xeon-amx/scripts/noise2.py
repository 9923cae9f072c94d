"""Both engines at 2 threads (and fast at 1), with and without burner, alternating; env decides GOMP policy."""
import sys, torch, time, statistics, subprocess, os
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
import engines as E
from _timing import time_interleaved
arch, dtype = sys.argv[1], sys.argv[2]
BURST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "2026-11-30-epilogue-timing-xeon-amx", "scripts", "burst.py")
models = E.Models(arch, "cpu")
x = torch.randn(1, 3, 224, 224)
engs = {f"{k}@{t}": E.build(k, models, dtype, t) for k, t in (("fast", 1), ("fast", 2), ("openvino", 2))}
fns = {k: (lambda e=e: e.run(x)) for k, e in engs.items()}
prep = {k: (lambda t=int(k[-1]): torch.set_num_threads(t)) for k in engs}
time_interleaved(fns, repeats=2, prepare=prep)
for burst in (None, ("1", "4"), None, ("1", "4")):
    p = subprocess.Popen([sys.executable, BURST, *burst]) if burst else None
    time.sleep(0.3)
    res = time_interleaved(fns, repeats=7, prepare=prep)
    if p: p.kill(); p.wait()
    print(os.environ.get("TAG", ""), "burner", burst, {k: round(statistics.median(v) * 1e3, 2) for k, v in res.items()}, flush=True)
