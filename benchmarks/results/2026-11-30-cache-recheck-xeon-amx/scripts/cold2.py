"""Cold cost of each piece of the per-call path: a 32 MB buffer written before each timed call."""
import torch, mnv3_fast, time, statistics
from mnv3_fast import backends as BK
from mnv3_fast.backends.base import _tracing, Call
m = mnv3_fast.MobileNetV3(model_mode="SMALL").eval()
x = torch.randn(1, 3, 224, 224)
buf = torch.ones(8 * 2**20)
def cold(f, n=300):
    ts = []
    for _ in range(n):
        buf.add_(1.0); s = time.perf_counter(); f(); ts.append(time.perf_counter() - s)
    return statistics.median(ts) * 1e6
with torch.no_grad():
    m(x); m(x)
    v = m._plans.view(m); st = v.state
    sig = BK.call_signature(m, x, st)
    items = {
        "nothing": lambda: None,
        "x.device": lambda: x.device,
        "x.shape": lambda: x.shape,
        "x.dtype": lambda: x.dtype,
        "is_grad_enabled": torch.is_grad_enabled,
        "is_autocast_enabled('cpu')": lambda: torch.is_autocast_enabled("cpu"),
        "get_autocast_dtype('cpu')": lambda: torch.get_autocast_dtype("cpu"),
        "get_num_threads": torch.get_num_threads,
        "model.cpu_chunk_bytes": lambda: m.cpu_chunk_bytes,
        "model.validate_cache": lambda: m.validate_cache,
        "m._plans": lambda: m._plans,
        "call_signature": lambda: BK.call_signature(m, x, st),
        "hash(sig)": lambda: hash(sig),
        "v.lookup": lambda: v.lookup("shortcut", sig),
        "_tracing": _tracing,
        "view": lambda: m._plans.view(m),
        "state_unchanged": lambda: mnv3_fast._C.state_unchanged(m, st.snapshot),
        "Call(...)": lambda: Call("cpu", False, torch.float32, None, False, False, False, v),
    }
    r = {k: (cold(f), cold(f)) for k, f in items.items()}
for k, (a, b) in r.items(): print(f"{k:28s} {a:7.1f} {b:7.1f}")
