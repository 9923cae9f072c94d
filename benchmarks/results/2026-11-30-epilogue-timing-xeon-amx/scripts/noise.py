"""mnv3_fast and OpenVINO at batch 1, 1 and 2 threads, interleaved, without and with a bursty background
process (burst.py ON_MS OFF_MS: spins ON_MS, sleeps OFF_MS), alternately.  python noise.py large bf16"""
import sys, torch, time, statistics, subprocess
import os; BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."); sys.path.insert(0, BENCH)
import engines as E
from _timing import time_interleaved
arch, dtype = sys.argv[1], sys.argv[2]
models = E.Models(arch, "cpu")
x = torch.randn(1, 3, 224, 224)
engs = {f"{k}@{t}": E.build(k, models, dtype, t) for k in ("fast", "openvino") for t in (1, 2)}
fns = {k: (lambda e=e: e.run(x)) for k, e in engs.items()}
prep = {k: (lambda t=int(k[-1]): torch.set_num_threads(t)) for k in engs}
time_interleaved(fns, repeats=2, prepare=prep)
for burst in (None, ("1", "4"), None, ("1", "4"), ("0.3", "2")):
    p = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "burst.py"), *burst]) if burst else None
    time.sleep(0.3)
    res = time_interleaved(fns, repeats=7, prepare=prep)
    if p: p.kill(); p.wait()
    print("burner", burst, {k: round(statistics.median(v) * 1e3, 2) for k, v in res.items()}, flush=True)
