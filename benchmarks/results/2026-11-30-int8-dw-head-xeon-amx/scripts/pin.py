"""One engine (fast or openvino), Large bf16 b1, 2 threads: its two busy threads free or pinned one per CPU
(os.sched_setaffinity), quiet or with burst.py 1 4; medians of 2 s of calls, 3 rounds.  python pin.py fast"""
import sys, torch, time, os, subprocess, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
import engines as E
BURST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "2026-11-30-epilogue-timing-xeon-amx", "scripts", "burst.py")
eng = sys.argv[1]
models = E.Models("large", "cpu")
x = torch.randn(1, 3, 224, 224)
torch.set_num_threads(2)
e = E.build(eng, models, "bf16", 2)
for _ in range(50): e.run(x)
def busy_tids():
    out = []
    for t in os.listdir(f"/proc/{os.getpid()}/task"):
        st = open(f"/proc/{os.getpid()}/task/{t}/stat").read().rsplit(")", 1)[1].split()
        out.append((int(st[11]) + int(st[12]), int(t)))
    return [t for _, t in sorted(out, reverse=True)[:2]]
def timeit(secs=2.0):
    ts = []
    t0 = time.time()
    while time.time() - t0 < secs:
        s = time.perf_counter(); e.run(x); ts.append(time.perf_counter() - s)
    return statistics.median(ts) * 1e3
res = {}
for rnd in range(3):
    for pin in (False, True):
        tids = busy_tids()
        for i, t in enumerate(tids):
            os.sched_setaffinity(t, {i} if pin else {0, 1})
        for burn in (False, True):
            p = subprocess.Popen([sys.executable, BURST, "1", "4"]) if burn else None
            time.sleep(0.2)
            res.setdefault((pin, burn), []).append(round(timeit(), 2))
            if p: p.kill(); p.wait()
for k, v in res.items(): print(eng, "pinned" if k[0] else "free", "burner" if k[1] else "quiet", v)
