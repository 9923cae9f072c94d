"""Per-thread CPU share and context switches of one engine at 2 threads, quiet or with the burner.
    python ctx.py large bf16 fast|openvino [burn]"""
import sys, torch, time, os, subprocess
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
import engines as E
BURST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "2026-11-30-epilogue-timing-xeon-amx", "scripts", "burst.py")
arch, dtype, eng = sys.argv[1], sys.argv[2], sys.argv[3]
burn = len(sys.argv) > 4
models = E.Models(arch, "cpu")
x = torch.randn(1, 3, 224, 224)
torch.set_num_threads(2)
e = E.build(eng, models, dtype, 2)
for _ in range(50): e.run(x)
def snap():
    d = {}
    for t in os.listdir(f"/proc/{os.getpid()}/task"):
        s = open(f"/proc/{os.getpid()}/task/{t}/status").read().split("\n")
        st = open(f"/proc/{os.getpid()}/task/{t}/stat").read().rsplit(")", 1)[1].split()
        v = [int(l.split()[1]) for l in s if "ctxt_switches" in l]
        d[t] = (v[0], v[1], int(st[11]) + int(st[12]), int(st[36]) if len(st) > 36 else -1)
    return d
p = subprocess.Popen([sys.executable, BURST, "1", "4"]) if burn else None
time.sleep(0.2)
a = snap(); t0 = time.time(); n = 0
while time.time() - t0 < 3: e.run(x); n += 1
b = snap(); dt = time.time() - t0
if p: p.kill()
print(eng, "burn" if burn else "quiet", f"{dt/n*1e3:.2f} ms/call, {n} calls")
for t in b:
    if t in a:
        dv, dn, dc = b[t][0]-a[t][0], b[t][1]-a[t][1], b[t][2]-a[t][2]
        if dc > 5 or dv > 50: print(f"  tid {t}: vol/call {dv/n:.1f} invol/call {dn/n:.2f} cpu {dc/100/dt*100:.0f}%")
