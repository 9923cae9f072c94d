"""full walk vs state_unchanged: warm and right after each forward.  python ms4.py large|small THREADS"""
import torch, mnv3_fast, time, sys
from mnv3_fast.testing import calibrate_bn_
from mnv3_fast.plan import cache as C
from mnv3_fast import _C
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1); torch.manual_seed(0)
m = calibrate_bn_(mnv3_fast.MobileNetV3(model_mode=sys.argv[1].upper())).eval()
x = torch.randn(1, 3, 224, 224)
st = C._read_model(m)
walk = lambda: _C.model_state(m, C._HYPERPARAMETERS_BY_NAME, C.MODE_SENSITIVE)
check = lambda: _C.state_unchanged(m, st.snapshot)
assert check()
for name, f in (("walk", walk), ("state_unchanged", check)):
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        for _ in range(10): m(x)
        n = 2000; s = time.perf_counter()
        for _ in range(n): f()
        warm = (time.perf_counter() - s) / n
        tot = 0
        for _ in range(300):
            m(x); s = time.perf_counter(); f(); tot += time.perf_counter() - s
        print(f"{name}: warm {warm*1e6:.1f} us, after a forward {tot/300*1e6:.1f} us")
