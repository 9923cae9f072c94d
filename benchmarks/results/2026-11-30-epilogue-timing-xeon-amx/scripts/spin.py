import sys, os, torch, time
import os; BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."); sys.path.insert(0, BENCH)
import engines as E
which = sys.argv[1]
models = E.Models("large", "cpu")
x = torch.randn(1, 3, 224, 224)
torch.set_num_threads(2)
eng = E.build(which, models, "fp32", 2)
for _ in range(5): eng.run(x)
def cpu():
    import resource; r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
for gap in (0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1):
    for _ in range(10): eng.run(x)
    c0 = cpu(); t0 = time.perf_counter()
    time.sleep(gap)
    print(which, "gap %.0f ms: process used %.1f ms CPU while main slept" % (gap * 1e3, (cpu() - c0) * 1e3))
