import os, sys, torch, collections, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
import engines as E
import openvino as ov
arch, batch, prec = sys.argv[1], int(sys.argv[2]), sys.argv[3]
models = E.Models(arch, "cpu")
path, _ = models.onnx_path()
core = ov.Core()
cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": prec, "PERF_COUNT": True}
cm = core.compile_model(core.read_model(path), "CPU", cfg)
req = cm.create_infer_request()
x = torch.randn(batch, 3, 224, 224).numpy()
for _ in range(20): req.infer({0: x})
acc = collections.defaultdict(float); order = []
N = 100
t0 = time.perf_counter()
for _ in range(N):
    req.infer({0: x})
    for p in req.profiling_info:
        k = (p.node_name, p.node_type, p.exec_type)
        if k not in acc: order.append(k)
        acc[k] += p.real_time.total_seconds() * 1e6
print("wall per infer ms", (time.perf_counter() - t0) / N * 1e3)
tot = 0
for k in order:
    t = acc[k] / N; tot += t
    if t > 3: print(f"{t:8.1f} {k[1]:18s} {k[2]:28s} {k[0][:60]}")
print("total", tot)
