"""Counts full walks (plan.cache._read_model) in 100 steady-state calls: 0 means every call took the re-check."""
import torch, mnv3_fast
from mnv3_fast.plan import cache as C
from mnv3_fast.testing import calibrate_bn_
m = calibrate_bn_(mnv3_fast.MobileNetV3(model_mode="SMALL")).eval()
x = torch.randn(1, 3, 224, 224)
n = [0]; orig = C._read_model
def counting(model): n[0] += 1; return orig(model)
C._read_model = counting
for ctx in (torch.no_grad, lambda: torch.autocast("cpu", torch.bfloat16)):
    with ctx():
        for _ in range(3): m(x)
        n[0] = 0
        for _ in range(100): m(x)
        print("full walks in 100 calls:", n[0])
q = mnv3_fast.quantize(m, [torch.randn(2, 3, 224, 224)])
with torch.no_grad():
    for _ in range(3): q(x)
    n[0] = 0
    for _ in range(100): q(x)
    print("int8 full walks in 100 calls:", n[0])
