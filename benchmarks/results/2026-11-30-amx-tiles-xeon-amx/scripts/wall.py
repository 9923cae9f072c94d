"""Large/Small b1 wall ms per call at 1 and 2 threads (median of 7 samples of 50 calls).  python wall.py large bf16"""
import torch, mnv3_fast, sys, time, statistics
from mnv3_fast.testing import calibrate_bn_
arch, dt = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
m = calibrate_bn_(mnv3_fast.MobileNetV3(model_mode=arch.upper())).eval()
x = torch.randn(1, 3, 224, 224)
ctx = torch.autocast("cpu", torch.bfloat16) if dt == "bf16" else torch.no_grad()
out = {}
with torch.no_grad(), ctx:
    for th in (1, 2):
        torch.set_num_threads(th)
        for _ in range(20): m(x)
        s = []
        for _ in range(7):
            t = time.perf_counter()
            for _ in range(50): m(x)
            s.append((time.perf_counter() - t) / 50 * 1e3)
        out[th] = round(statistics.median(s), 3)
print(out)
