"""The Python side of a call: model(x) against the C++ op called directly with the same program, and
model_state + the op.  python ovh.py THREADS large|small (bf16 autocast)"""
import torch, mnv3_fast, sys, time
from mnv3_fast.testing import calibrate_bn_
th = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(th); torch.manual_seed(0)
m = calibrate_bn_(mnv3_fast.MobileNetV3(model_mode=(sys.argv[2].upper() if len(sys.argv) > 2 else "LARGE"))).eval()
x = torch.randn(1, 3, 224, 224)
op = torch.ops.mnv3.run_cpu_program.default
cap = {}
import mnv3_fast.backends.cpu.backend as B
orig = B._run_cpu_program
def spy(x, t, p, th):
    cap["args"] = (x, t, p, th); return orig(x, t, p, th)
B._run_cpu_program = spy
with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
    for _ in range(10): m(x)
B._run_cpu_program = orig
xx, t, p, _ = cap["args"]
print("program length", len(p), "tensors", len(t))
def bench(f, n=400):
    for _ in range(20): f()
    best = []
    for _ in range(5):
        s = time.perf_counter()
        for _ in range(n): f()
        best.append((time.perf_counter() - s) / n * 1e3)
    return sorted(best)[2]
with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
    for r in range(2):
        a = bench(lambda: m(x)); b = bench(lambda: op(xx, t, p, th))
        print(f"model {a:.3f} ms, op direct {b:.3f} ms, python-side {a-b:.3f}")
with torch.no_grad():
    c = bench(lambda: op(xx, t, p, th))
    print(f"op direct, no autocast: {c:.3f}")
from mnv3_fast.plan import cache as C
from mnv3_fast import _C
ms = lambda: _C.model_state(m, C._HYPERPARAMETERS_BY_NAME, C.MODE_SENSITIVE)
with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
    for r in range(2):
        a = bench(lambda: m(x)); b = bench(lambda: op(xx, t, p, th)); c = bench(lambda: (ms(), op(xx, t, p, th)))
        print(f"model {a:.3f}, op {b:.3f}, model_state+op {c:.3f}: model_state {c-b:.3f}, other python {a-c:.3f}")
