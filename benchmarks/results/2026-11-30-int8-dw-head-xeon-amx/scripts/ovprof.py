"""OpenVINO bf16 (Large b1) per-layer times from PERF_COUNT, medians of 200 calls.  python ovprof.py THREADS"""
import os, sys, torch, time, collections
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
import engines as E
import openvino as ov
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
models = E.Models("large", "cpu")
path, _ = models.onnx_path()
core = ov.Core()
cm = core.compile_model(core.read_model(path), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "bf16", "PERF_COUNT": True})
req = cm.create_infer_request()
x = torch.randn(1, 3, 224, 224).numpy()
for _ in range(50): req.infer({0: x})
acc = collections.defaultdict(list)
N = 200
t0 = time.perf_counter()
for _ in range(N):
    req.infer({0: x})
    for p in req.profiling_info:
        acc[(p.node_name, p.node_type, p.exec_type)].append(p.real_time.total_seconds() * 1e6)
print("wall", (time.perf_counter() - t0) / N * 1e3, "ms (incl. profiling readout)")
import statistics
rows = [(k, statistics.median(v)) for k, v in acc.items()]
tot = sum(r[1] for r in rows)
print("sum of medians", round(tot, 1), "us")
bytype = collections.defaultdict(float)
for k, v in rows: bytype[k[1]] += v
print({k: round(v, 1) for k, v in sorted(bytype.items(), key=lambda a: -a[1])})
for k, v in rows:
    if v > 15: print(round(v, 1), k)
