"""Which engine comes after OpenVINO in the interleaved rounds matters more than the thread choice.

    python position.py large 1 fp32

Times, interleaved as benchmarks/run.py does (2 threads each), two mnv3_fast models (adaptive thread
choice on and off), a minimal path (the cache check and the program op, nothing else) and OpenVINO, in two
orders, and prints which calls of the adaptive model ran on one thread ("1") or all ("."): the engine
timed right after OpenVINO pays for its cold first call, whichever it is."""
import collections
import os
import statistics
import sys

import torch

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
sys.path.insert(0, BENCH)
import engines as E  # noqa: E402
from _timing import time_interleaved  # noqa: E402

from mnv3_fast import _C  # noqa: E402
from mnv3_fast.backends.cpu import backend as B  # noqa: E402
from mnv3_fast.backends.cpu import threads as T  # noqa: E402
from mnv3_fast.plan import cache as C  # noqa: E402

log = collections.defaultdict(list)
_record = T.ThreadTiming.record


def record(self, threads, seconds):
    log[id(self)].append(threads)
    return _record(self, threads, seconds)


T.ThreadTiming.record = record
arch, batch, dtype = sys.argv[1], int(sys.argv[2]), sys.argv[3]
models = E.Models(arch, "cpu")
x = torch.randn(batch, 3, 224, 224)
adaptive = E.build("fast", models, dtype, 2)
fixed = E.build("fast", models, dtype, 2)
[m for m in (c.cell_contents for c in fixed.run.__closure__) if isinstance(m, torch.nn.Module)][0].cpu_adaptive_threads = False
ov = E.build("openvino", models, dtype, 2)
m = E.mnv3_fast.convert(models.reference).eval()
torch.set_num_threads(2)
with torch.inference_mode():
    for _ in range(3):
        m(x)
    call, backend = m._call(x)
    program = backend.program(m, x, call, 2)


def minimal():
    with torch.inference_mode():
        _C.model_state(m, C._HYPERPARAMETERS_BY_NAME, C.MODE_SENSITIVE)
        return B._run_cpu_program(x, program.tensors, program.program, 2)


two = lambda: torch.set_num_threads(2)  # noqa: E731
for order in (("adaptive", "fixed"), ("fixed", "adaptive")):
    engines = {"adaptive": lambda: adaptive.run(x), "fixed": lambda: fixed.run(x)}
    fns = {k: engines[k] for k in order}
    fns.update(minimal=minimal, openvino=lambda: ov.run(x))
    res = time_interleaved(fns, repeats=7, prepare={k: two for k in fns})
    print(" -> ".join(fns), {k: round(statistics.median(v) * 1e3, 2) for k, v in res.items()})
for choices in log.values():
    print("".join("1" if t == 1 else "." for t in choices))
