"""Where a batch-1 forward's time goes outside the CPU program op: before it (the state read, choosing the
backend, the thread choice) and after it.  Medians of 350 calls after 50, in microseconds.

    python per_call_overhead.py <fp32|bf16> <large|small>
"""
import collections
import statistics
import sys
import time

import torch

import mnv3_fast
from mnv3_fast.backends.cpu import backend as B

torch.set_num_threads(2)
dt = torch.bfloat16 if sys.argv[1] == "bf16" else torch.float32
m = mnv3_fast.MobileNetV3(sys.argv[2].upper()).eval().to(dt)
x = torch.randn(1, 3, 224, 224).to(dt)
clock = time.perf_counter_ns
stamps = {}
run_op = B._run_cpu_program


def timed_op(*args):
    stamps["in"] = clock()
    out = run_op(*args)
    stamps["out"] = clock()
    return out


B._run_cpu_program = timed_op
times = collections.defaultdict(list)
with torch.inference_mode():
    for i in range(400):
        t0 = clock()
        m(x)
        t1 = clock()
        times["before the op"].append(stamps["in"] - t0)
        times["the op"].append(stamps["out"] - stamps["in"])
        times["after the op"].append(t1 - stamps["out"])
for k, v in times.items():
    print(f"{k:14s} {statistics.median(v[50:]) / 1e3:8.1f} us")
