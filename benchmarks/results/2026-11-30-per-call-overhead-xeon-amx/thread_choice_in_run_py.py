"""benchmarks/run.py with every CPU-program call's thread count and time logged (ThreadTiming.record):
shows which thread setting each mnv3_fast engine actually ran on during the timing.  Run from the
repository root with run.py's arguments, e.g.

    python <this file> --engines fast,openvino --arch large --batch 1 --dtype bf16 --threads 1,2 --out /tmp/x
"""
import collections
import sys

sys.path.insert(0, "benchmarks")
from mnv3_fast.backends.cpu import threads  # noqa: E402

calls = collections.defaultdict(list)
record = threads.ThreadTiming.record


def logged(self, n_threads, seconds):
    calls[id(self)].append((n_threads, round(seconds * 1e3, 2)))
    return record(self, n_threads, seconds)


threads.ThreadTiming.record = logged
import run  # noqa: E402

run.main(sys.argv[1:])
for timing, log in calls.items():
    print(f"program {timing}: {len(log)} calls, by thread count {dict(collections.Counter(t for t, _ in log))}")
    print("  ms per call:", [ms for _, ms in log])
