"""mnv3_fast's per-instruction median times (torch.profiler), one line per program instruction.
    python perinst.py large 1 bf16 1   (arch batch fp32|bf16|int8 threads)"""
import os, sys, torch, collections, statistics
from torch.profiler import profile, ProfilerActivity
import mnv3_fast
from mnv3_fast.testing import calibrate_bn_
arch, batch, dtype, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads); torch.manual_seed(0)
m = calibrate_bn_(mnv3_fast.MobileNetV3(model_mode=arch.upper())).eval()
x = torch.randn(batch, 3, 224, 224)
ctx = torch.autocast("cpu", torch.bfloat16) if dtype == "bf16" else torch.no_grad()
iters = 60
with torch.no_grad(), ctx:
    for _ in range(5): m(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters): m(x)
evs = [e for e in prof.events() if e.name.startswith("mnv3::program::")]
per = len(evs) // iters
times = collections.defaultdict(list)
for k, e in enumerate(evs): times[k % per].append(e.cpu_time_total)
for k in range(per):
    print(k, evs[k].name.split("::")[-1], evs[k].input_shapes, round(statistics.median(times[k]), 1))
