"""150 regions of 8 chunks (~10 us each) on 2 threads: OpenMP static regions against a pool whose caller
waits only for the chunks, without and with burst.py in the background.  python pool_synthetic.py"""
import os, sys, time, statistics, subprocess
HERE = os.path.dirname(os.path.abspath(__file__))
import torch
from torch.utils.cpp_extension import load
p = load("poolbench", [os.path.join(HERE, "pool_synthetic.cpp")], extra_cflags=["-O2", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
R, C, IT = 150, 8, 4000   # ~150 regions of 8 chunks
def med(f, n=15):
    return statistics.median(f() for _ in range(n))
for _ in range(3): p.run_omp(R, C, IT); p.run_pool(R, C, IT)
for burst in (None, ("1", "4"), None, ("1", "4")):
    b = subprocess.Popen([sys.executable, os.path.join(HERE, "burst.py"), *burst]) if burst else None
    time.sleep(0.2)
    o = med(lambda: p.run_omp(R, C, IT)); q = med(lambda: p.run_pool(R, C, IT))
    if b: b.kill(); b.wait()
    print("burner", burst, "omp %.2f ms  pool %.2f ms" % (o, q), flush=True)
