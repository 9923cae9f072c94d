"""mnv3_fast bf16 two ways, interleaved in one process: model.to(bf16) fed x.to(bf16) per call, and the float32
model under torch.autocast("cpu", torch.bfloat16) fed the float32 image (which the program's stem now reads
as it is).  Usage: python autocast_vs_to_bf16.py large|small BATCH THREADS  (ms per image, median [min-max]
of 21 samples)."""
import sys, time, torch, statistics, copy
import mnv3_fast  # (run from the repository root, with the package importable)
from mnv3_fast import reference, testing
arch, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)
ref = reference.MobileNetV3(arch.upper()).eval()
m32 = mnv3_fast.convert(ref).eval()
mbf = copy.deepcopy(m32).to(torch.bfloat16)
x = torch.randn(batch, 3, 224, 224)
def a():
    with torch.inference_mode(): return mbf(x.to(torch.bfloat16))
def b():
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16): return m32(x)
engs = {"to(bf16)": a, "autocast": b}
for f in engs.values():
    for _ in range(5): f()
res = {n: [] for n in engs}
reps = max(1, 16 // batch)
for r in range(21):
    for n, f in engs.items():
        t = time.perf_counter()
        for _ in range(reps): f()
        res[n].append((time.perf_counter() - t) / reps / batch * 1e3)
for n in engs: print(arch, batch, threads, n, "%.3f [%.3f-%.3f]" % (statistics.median(res[n]), min(res[n]), max(res[n])))
