"""The depthwise op alone on MobileNetV3-Large's shapes, bf16 channels_last, 1 thread."""
import torch, time, sys, mnv3_fast
torch.set_num_threads(1)
def bench(C, H, k, s, dtype=torch.bfloat16, act="relu"):
    x = torch.randn(1, C, H, H).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(C, 1, k, k).to(dtype); b = torch.randn(C).to(dtype)
    f = lambda: torch.ops.mnv3.dw_conv_bn_act(x, w, b, s, k // 2, 1, act)
    for _ in range(20): f()
    ts = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(50): f()
        ts.append((time.perf_counter() - t) / 50)
    ts.sort(); Ho = (H + 2 * (k // 2) - k) // s + 1
    macs = C * Ho * Ho * k * k
    print(f"C={C} H={H} k={k} s={s} {dtype}: {ts[3]*1e6:.1f} us  {macs/ts[3]/1e9:.1f} GMAC/s")
for args in [(16,112,3,1),(64,112,3,2),(72,56,3,1),(72,56,5,2),(120,28,5,1),(240,28,3,2),(480,14,3,1),(672,14,5,2),(960,7,5,1)]:
    bench(*args)
bench(64,112,3,2,torch.float32)
