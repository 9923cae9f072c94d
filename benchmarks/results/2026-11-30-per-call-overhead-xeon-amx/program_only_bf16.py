"""The bf16 CPU program op alone (no Python around it), batch 1, 1 thread: median of 200 calls, in us.
Run it alternately for two builds (PYTHONPATH=<a copy of the package with the other .so>).

    python program_only_bf16.py <label>
"""
import statistics
import sys
import time

import torch

import mnv3_fast
from mnv3_fast import backends
from mnv3_fast.backends.cpu import backend as B

torch.set_num_threads(1)
result = {}
for arch in ("LARGE", "SMALL"):
    m = mnv3_fast.MobileNetV3(arch).eval().to(torch.bfloat16)
    x = torch.randn(1, 3, 224, 224).to(torch.bfloat16)
    program = backends.CPU_PROGRAM.program(m, x, backends.make_call(m, x), 1)
    with torch.inference_mode():
        for _ in range(20):
            B._run_cpu_program(x, program.tensors, program.program, 1)
        samples = []
        for _ in range(200):
            t = time.perf_counter()
            B._run_cpu_program(x, program.tensors, program.program, 1)
            samples.append(time.perf_counter() - t)
    result[arch] = round(statistics.median(samples) * 1e6)
print(sys.argv[1], result)
