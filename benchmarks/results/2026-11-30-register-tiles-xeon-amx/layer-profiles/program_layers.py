import os, sys, torch, collections
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
import engines as E
from torch.profiler import profile, ProfilerActivity
from mnv3_fast.ops import cpu_program as isa
arch, batch, dtype, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
iters = int(sys.argv[5]) if len(sys.argv) > 5 else 100
torch.set_num_threads(threads)
models = E.Models(arch, "cpu")
eng = E.build("fast", models, dtype, threads)
x = torch.randn(batch, 3, 224, 224)
for _ in range(5): eng.run(x)
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(iters): eng.run(x)
evs = [e for e in prof.events() if e.name.startswith("mnv3::program::")]
per = len(evs) // iters
times = collections.defaultdict(list)
for k, e in enumerate(evs):
    times[k % per].append(e.cpu_time_total)
import statistics
names = [evs[k].name.split("::")[-1] for k in range(per)]
tot = 0
rows = []
for k in range(per):
    t = statistics.median(times[k]); tot += t
    rows.append((k, names[k], t))
for k, n, t in rows:
    if t > 5: print(f"{k:3d} {n:8s} {t:8.1f} us")
print("total", tot)
