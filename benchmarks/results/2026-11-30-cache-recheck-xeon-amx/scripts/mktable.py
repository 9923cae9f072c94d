"""The README table (median over runs, fastest bolded) from summarize.py's standing tables.  python mktable.py summary_cdef.md"""
import re, sys
text = open(sys.argv[1]).read()
blocks = {}
for prec in ("fp32", "bf16", "int8"):
    m = re.search(r"^Standing, %s:.*?\n\n(\|.*?)(?:\n\n|\Z)" % prec, text, re.S | re.M)
    rows = [r for r in m.group(1).splitlines() if r.startswith("|") and not r.startswith("|---")]
    head = [c.strip() for c in rows[0].strip("|").split("|")]
    blocks[prec] = (head, [[c.strip() for c in r.strip("|").split("|")] for r in rows[1:]])
def val(s): return s.split(" (")[0].replace("*", "")
out = ["| precision | cell | **mnv3_fast** | eager PyTorch | torch.compile | ONNX Runtime | OpenVINO | ratio |",
       "|---|---|---|---|---|---|---|---|"]
for prec, (head, rows) in blocks.items():
    idx = {h: i for i, h in enumerate(head)}
    for r in rows:
        get = lambda name: next((val(r[i]) for h, i in idx.items() if h.startswith(name)), "-")
        if prec == "fp32":
            cols = [get("eager"), get("torch.compile"), get("onnxruntime"), get("openvino (fp32)")]
        elif prec == "bf16":
            cols = [get("eager"), get("torch.compile") + " (autocast)", "-", get("openvino (bf16)")]
        else:
            cols = ["(fp32) " + get("eager"), get("torch.compile PT2E") + " (PT2E)", get("onnxruntime") + " (QDQ)", get("openvino") + " (QDQ)"]
        mn = val(r[1])
        def f(c):
            try: return float(c.replace("(fp32) ", "").split()[0])
            except ValueError: return None
        best = min([x for x in map(f, cols) if x is not None] + [float(mn)])
        mn_s = f"**{mn}**" if float(mn) == best else mn
        cols = [f"**{c}**" if f(c) == best and float(mn) != best else c for c in cols]
        out.append(f"| {prec} | {r[0]} | {mn_s} | " + " | ".join(cols) + f" | {r[-1]} |")
print("\n".join(out))
