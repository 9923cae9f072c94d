import sys, runpy, collections, time
import os; BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."); sys.path.insert(0, BENCH)
import engines as E
log = collections.defaultdict(list)
orig_build = E.build
def build(key, models, dtype, threads=None, *a, **k):
    eng = orig_build(key, models, dtype, threads, *a, **k)
    if eng is None: return eng
    run = eng.run
    tag = f"{key}@{threads}"
    def timed(x):
        s = time.perf_counter(); y = run(x); log[tag].append(round((time.perf_counter() - s) * 1e3, 1)); return y
    eng.run = timed
    return eng
E.build = build
sys.argv = ["run.py"] + sys.argv[1:]
try:
    runpy.run_path(os.path.join(BENCH, "run.py"), run_name="__main__")
finally:
    for k, v in log.items():
        print(k, len(v), v[-40:])
