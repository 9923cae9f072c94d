"""Minor page faults per call (getrusage), b1, per arch/dtype/threads.  python faults.py"""
import resource, torch, mnv3_fast, time
from mnv3_fast.testing import calibrate_bn_
x = torch.randn(1, 3, 224, 224)
for arch in ("SMALL", "LARGE"):
    m = calibrate_bn_(mnv3_fast.MobileNetV3(model_mode=arch)).eval()
    for dt in ("fp32", "bf16"):
        ctx = torch.autocast("cpu", torch.bfloat16) if dt == "bf16" else torch.autocast("cpu", enabled=False)
        for th in (1, 2):
            torch.set_num_threads(th)
            with torch.no_grad(), ctx:
                for _ in range(30): m(x)
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; s = time.perf_counter()
                for _ in range(200): m(x)
                dt_ms = (time.perf_counter() - s) / 200 * 1e3
                f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            print(f"{arch} {dt} {th}T: {(f1 - f0) / 200:.1f} minor faults per call, {dt_ms:.2f} ms")
