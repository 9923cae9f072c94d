"""In one process, blocks of calls with the cache's cheap re-check (_C.state_unchanged) and with a full
walk on every call (as before), alternated; per-round mean ms per call.  python paired.py small bf16 THREADS"""
import torch, mnv3_fast, sys, time, statistics
from mnv3_fast.testing import calibrate_bn_
from mnv3_fast import _C
arch, dt, th = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(th); torch.manual_seed(0)
m = calibrate_bn_(mnv3_fast.MobileNetV3(model_mode=arch.upper())).eval()
x = torch.randn(1, 3, 224, 224)
ctx = torch.autocast("cpu", torch.bfloat16) if dt == "bf16" else torch.no_grad()
recheck = _C.state_unchanged
def walk_always(model, snapshot): return False
res = {"recheck": [], "walk": []}
with torch.no_grad(), ctx:
    for _ in range(30): m(x)
    for r in range(30):
        for name, f in (("recheck", recheck), ("walk", walk_always))[:: 1 if r % 2 else -1]:
            _C.state_unchanged = f
            m(x); m(x)
            s = time.perf_counter()
            for _ in range(20): m(x)
            res[name].append((time.perf_counter() - s) / 20 * 1e3)
_C.state_unchanged = recheck
a, b = res["recheck"], res["walk"]
d = [y - x for x, y in zip(a, b)]
print(f"{arch} {dt} {th}T: recheck {statistics.median(a):.3f} ms, walk {statistics.median(b):.3f} ms, "
      f"paired difference median {statistics.median(d)*1e3:.0f} us (quartiles {statistics.quantiles(d)[0]*1e3:.0f}..{statistics.quantiles(d)[2]*1e3:.0f})")
