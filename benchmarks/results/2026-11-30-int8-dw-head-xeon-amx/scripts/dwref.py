"""The depthwise op against ATen's (oneDNN's) grouped conv2d on the same inputs, 1 thread."""
import torch, time, mnv3_fast
import torch.nn.functional as F
torch.set_num_threads(1)
def t(f):
    for _ in range(20): f()
    ts = []
    for _ in range(7):
        s = time.perf_counter()
        for _ in range(50): f()
        ts.append((time.perf_counter() - s) / 50)
    return sorted(ts)[3] * 1e6
for C,H,k,s in [(64,112,3,2),(72,56,3,1),(120,28,5,1),(480,14,3,1),(960,7,5,1)]:
    for dt in (torch.bfloat16, torch.float32):
        x = torch.randn(1, C, H, H).to(dt).contiguous(memory_format=torch.channels_last)
        w = torch.randn(C, 1, k, k).to(dt); b = torch.randn(C).to(dt)
        ours = t(lambda: torch.ops.mnv3.dw_conv_bn_act(x, w, b, s, k // 2, 1, "relu"))
        with torch.no_grad():
            ref = t(lambda: F.conv2d(x, w, b, s, k // 2, 1, C))
        print(C, H, k, s, dt, f"ours {ours:.1f} us, aten/onednn {ref:.1f} us")
