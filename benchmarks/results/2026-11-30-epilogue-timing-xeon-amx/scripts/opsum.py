# sums of per-instruction median times (us) by opcode; argv: arch batch dtype threads
import os, sys, torch, collections, statistics, json
from torch.profiler import profile, ProfilerActivity
import mnv3_fast
from mnv3_fast.testing import calibrate_bn_
arch, batch, dtype, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
m = calibrate_bn_(mnv3_fast.MobileNetV3(model_mode=arch.upper())).eval()
x = torch.randn(batch, 3, 224, 224)
if dtype == "int8":
    m = mnv3_fast.quantize(m, [torch.randn(8, 3, 224, 224) for _ in range(2)])
ctx = torch.autocast("cpu", torch.bfloat16) if dtype == "bf16" else torch.no_grad()
iters = int(os.environ.get("ITERS", 60))
with torch.no_grad(), ctx:
    for _ in range(5): m(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters): m(x)
evs = [e for e in prof.events() if e.name.startswith("mnv3::program::")]
per = len(evs) // iters
times = collections.defaultdict(list)
for k, e in enumerate(evs): times[k % per].append(e.cpu_time_total)
sums = collections.defaultdict(float)
for k in range(per): sums[evs[k].name.split("::")[-1]] += statistics.median(times[k])
sums["total"] = sum(v for v in sums.values())
print(json.dumps({k: round(v, 1) for k, v in sums.items()}))
