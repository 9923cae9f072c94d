"""In one process: call_signature through _C.call_key vs the Python _call_key, alternated blocks.
python paired3.py small bf16 THREADS"""
import torch, mnv3_fast, sys, time, statistics
from mnv3_fast.testing import calibrate_bn_
from mnv3_fast import backends as BK, _C
arch, dt, th = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(th); torch.manual_seed(0)
m = calibrate_bn_(mnv3_fast.MobileNetV3(model_mode=arch.upper())).eval()
x = torch.randn(1, 3, 224, 224)
ctx = torch.autocast("cpu", torch.bfloat16) if dt == "bf16" else torch.no_grad()
res = {"C": [], "python": []}
with torch.no_grad(), ctx:
    for _ in range(30): m(x)
    for r in range(30):
        for name, f in (("C", _C.call_key), ("python", BK._call_key))[:: 1 if r % 2 else -1]:
            BK.call_key = f
            m(x); m(x)
            s = time.perf_counter()
            for _ in range(20): m(x)
            res[name].append((time.perf_counter() - s) / 20 * 1e3)
a, b = res["C"], res["python"]
d = [y - x for x, y in zip(a, b)]
print(f"{arch} {dt} {th}T: C call_key {statistics.median(a):.3f} ms, Python {statistics.median(b):.3f} ms, "
      f"paired difference median {statistics.median(d)*1e3:.0f} us (quartiles {statistics.quantiles(d)[0]*1e3:.0f}..{statistics.quantiles(d)[2]*1e3:.0f})")
