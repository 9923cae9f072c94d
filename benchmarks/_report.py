"""What benchmarks/run.py shows: the console tables, the standing per cell, the Markdown file and the chart.

A *row* is one engine at one thread count in one cell (arch, precision, batch);
a *cell* dict holds its rows' common facts (load while timed, skipped engines,
standing).  Times are reported per image: the README's unit.
"""
from __future__ import annotations

import os
import textwrap
from typing import Optional

from _timing import isa_summary

FAST_KEYS = ("fast", "fast_cl")
#: other processes using more than this many cores while a cell was timed make it "disturbed"
DISTURBED_OTHERS_CORES = 0.25
DISTURBED_STEAL_CORES = 0.1


def fmt_ms(ms: float) -> str:
    return f"{ms:.1f}" if ms >= 100 else f"{ms:.2f}"


def cell_title(cell) -> str:
    return f"{cell['arch'].capitalize()} {cell['dtype']} batch {cell['batch']}"


def thread_label(t) -> str:
    return "" if t is None else f"{t} thread" + ("s" if t != 1 else "")


def same_precision(row, group: str) -> bool:
    """A row computes in the cell's precision ("bf16 autocast" is bf16; the int8 cells' eager fp32
    baseline and OpenVINO's default-precision row are not)."""
    return row["precision"].split()[0] == group


def best_per_engine(rows: list) -> dict:
    """engine name -> its fastest row (each engine at its best thread count)."""
    best = {}
    for r in rows:
        if r["engine"] not in best or r["median_s"] < best[r["engine"]]["median_s"]:
            best[r["engine"]] = r
    return best


def _who(r) -> str:
    t = f", {thread_label(r['threads'])}" if r["threads"] is not None else ""
    return f"{r['engine']} ({r['precision']}{t})"


def standing(cell: dict, rows: list) -> dict:
    """mnv3_fast against the fastest other engine of the cell's precision, each at its best thread count:
    ratio = other's ms per image / mnv3_fast's (above 1: mnv3_fast is faster)."""
    group = cell["dtype"]
    best = best_per_engine(rows)
    ours = sorted((r for r in best.values() if r["key"] in FAST_KEYS and same_precision(r, group)),
                  key=lambda r: r["median_s"])
    others = sorted((r for r in best.values() if r["key"] not in FAST_KEYS), key=lambda r: r["median_s"])
    peers = [r for r in others if same_precision(r, group)]
    out = {"mnv3_fast": None, "fastest_other": None, "ratio": None, "faster_at_other_precision": []}
    brief = lambda r: {"engine": r["engine"], "precision": r["precision"], "threads": r["threads"],  # noqa: E731
                       "ms_per_image": r["ms_per_image"]}
    if ours:
        out["mnv3_fast"] = brief(ours[0])
    if peers:
        out["fastest_other"] = brief(peers[0])
    if not ours:
        why = next((s["reason"] for s in cell.get("skipped", []) if s["key"] in FAST_KEYS), "it did not run")
        text = f"mnv3_fast: no {group} result ({why})"
        if peers:
            text += f"; fastest {group} engine: {_who(peers[0])} at {fmt_ms(peers[0]['ms_per_image'])} ms/image"
        out["verdict"] = text
        return out
    a = ours[0]
    if not peers:
        out["verdict"] = (f"mnv3_fast {fmt_ms(a['ms_per_image'])} ms/image ({_who(a)}); "
                          f"no other {group} engine ran")
    else:
        b = peers[0]
        ratio = b["median_s"] / a["median_s"]
        out["ratio"] = ratio
        word = f"{ratio:.2f}x faster than" if ratio >= 1 else f"{1 / ratio:.2f}x slower than"
        out["verdict"] = (f"{_who(a)} is {word} the fastest other {group} engine, {_who(b)}: "
                          f"{fmt_ms(a['ms_per_image'])} vs {fmt_ms(b['ms_per_image'])} ms/image")
    faster = [r for r in others if not same_precision(r, group) and r["median_s"] < a["median_s"]]
    if faster:
        out["faster_at_other_precision"] = [brief(r) for r in faster]
        out["verdict"] += "; faster at another precision: " + ", ".join(
            f"{_who(r)} {fmt_ms(r['ms_per_image'])} ms/image" for r in faster)
    return out


def cell_disturbed(load: dict) -> bool:
    others, steal = load.get("others_cores"), load.get("steal_cores")
    return bool((others or 0) > DISTURBED_OTHERS_CORES or (steal or 0) > DISTURBED_STEAL_CORES)


def load_note(load: dict, cores: int) -> str:
    others, steal = load.get("others_cores"), load.get("steal_cores")
    if others is None:
        return "load of other processes unknown (no /proc/stat)"
    text = f"other processes used {others:.2f} of {cores} cores"
    if steal and steal >= 0.01:
        text += f", the hypervisor took {steal:.2f} (steal)"
    return text


# ---------------------------------------------------------------- tables

def _columns(cell: dict, rows: list, threads: list) -> tuple[list, list]:
    """Header and body (lists of strings) of a cell's table: one row per engine, one timing column per
    thread count (* marks each engine's best when there are several)."""
    by_engine: dict = {}
    for r in rows:
        by_engine.setdefault(r["engine"], {})[r["threads"]] = r
    best = best_per_engine(rows)
    eager = best.get("eager (NCHW)")
    header = ["engine", "precision"]
    header += [f"ms/image, {thread_label(t)}" if t is not None else "ms/image" for t in threads]
    header += ["speed-up vs eager", "max rel. diff", "top-1 agree"]
    body = []
    for name, per_thread in by_engine.items():
        b = best[name]
        line = [("** " if b["key"] in FAST_KEYS else "") + name, b["precision"]]
        for t in threads:
            r = per_thread.get(t)
            if r is None:
                line.append("-")
                continue
            mark = ("*" if r is b and len(per_thread) > 1 else " ") if len(threads) > 1 else ""
            line.append(f"{fmt_ms(r['ms_per_image'])} [{fmt_ms(r['min_ms_per_image'])}-"
                        f"{fmt_ms(r['max_ms_per_image'])}]{mark}")
        line.append(f"{eager['median_s'] / b['median_s']:.2f}x" if eager else "-")
        line.append(f"{b['rel_diff']:.1e}" if b.get("rel_diff") is not None else "-")
        line.append(f"{b['top1_agreement']:.0%} of {b['accuracy_images']}" if b.get("top1_agreement") is not None else "-")
        body.append(line)
    return header, body


def console_cell(cell: dict, rows: list, threads: list, cores: int) -> str:
    header, body = _columns(cell, rows, threads)
    widths = [max(len(h), *(len(line[i]) for line in body)) if body else len(h) for i, h in enumerate(header)]
    right = set(range(2, len(header)))  # numbers right-aligned

    def fmt(line):
        return "  " + "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(line, widths)))

    out = ["", f"{cell_title(cell)}, input {cell['size']}x{cell['size']}: ms per image, median of {cell['repeats']} "
               f"[min-max]; lower is better" + ("; * = the engine's best thread count" if len(threads) > 1 else "")]
    out.append(fmt(header))
    out.append("  " + "  ".join("-" * w for w in widths))
    out += [fmt(line) for line in body]
    for s in cell.get("skipped", []):
        out.append(f"  {s['engine']}: not run: {s['reason']}")
    if cell.get("standing"):
        out.append(f"  => {cell['standing']['verdict']}")
    if cell.get("disturbed"):
        out.append(f"  !! disturbed: {load_note(cell['load'], cores)} while this cell was timed; its numbers are noisy")
    return "\n".join(out)


def markdown(results: dict, args) -> str:
    env, load = results["environment"], results["load"]
    threads = env["threads"]
    lines = [f"# MobileNetV3 inference speed: {env.get('gpu') or env['cpu']}", ""]
    if env.get("mode") == "quick":
        lines += ["**Quick run** (`--quick`: few samples, no torch.compile): a smoke test, not a measurement.", ""]
    lines += [
        f"* Machine: {env['cpu']} ({env.get('cpu_id') or 'identity unknown'}), {env['cpu_count']} cores"
        + (f", {env['usable_cores']} usable" if env.get("usable_cores", env["cpu_count"]) != env["cpu_count"] else "")
        + f"; {isa_summary(env.get('cpu_flags'))}; torch CPU capability {env.get('cpu_capability')}"
        + (f"; GPU {env['gpu']}" if env.get("gpu") else ""),
        f"* Software: torch {env['torch']}, python {env['python']}" + "".join(
            f", {k} {env[k]}" for k in ("onnxruntime", "openvino", "torchvision", "torchao", "triton") if k in env)
        + f"; mnv3_fast {env.get('mnv3_fast')} from `{env.get('mnv3_fast_path')}`, C++ kernels "
        + ("loaded" if env.get("mnv3_cpu_kernels") else f"**missing** ({env.get('mnv3_extension_error')})"),
        f"* Date {env['date']}; threads {', '.join(map(str, threads)) if threads[0] is not None else 'n/a'}; input "
        f"{args.size}x{args.size}; median of {args.repeats} interleaved samples after {args.warmup} warm-up calls, "
        "[min-max] of the samples; each engine's best thread count marked *.",
        f"* Command: `{env['command']}`",
        f"* Load: {load_summary(load, env['cpu_count'])}",
        "",
        "Accuracy columns: *max rel. diff* is max |logits - fp32 eager logits| / max |fp32 eager logits|, *top-1 "
        "agree* the share of images whose top class matches fp32 eager's, on the benchmark's random images with "
        "random (BN-calibrated) weights. That measures numerical closeness, not accuracy on real data.",
    ]
    for cell in results["cells"]:
        rows = [r for r in results["rows"] if r["cell"] == cell["index"]]
        header, body = _columns(cell, rows, threads)
        lines += ["", f"## {cell_title(cell)}", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(v.replace("** ", "**", 1) + "**" if v.startswith("** ") else v for v in line)
                  + " |" for line in body]
        lines.append("")
        for s in cell.get("skipped", []):
            lines.append(f"* {s['engine']}: not run: {s['reason']}")
        if cell.get("standing"):
            lines.append(f"* **Standing:** {cell['standing']['verdict']}")
        lines.append(f"* Load while timed: {load_note(cell['load'], env['cpu_count'])}"
                     + (" (**disturbed**)" if cell.get("disturbed") else ""))
    setup = [r for r in results["rows"] if r["first_call_s"] > 1 or r["setup_s"] > 1]
    if setup:
        lines += ["", "One-time costs (not in the timings): " + "; ".join(
            f"{r['arch']} {r['dtype']} b{r['batch']} {r['engine']} ({thread_label(r['threads']) or '-'}): "
            f"first call {r['first_call_s']:.1f} s" + (f", export/quantize/load {r['setup_s']:.1f} s" if r["setup_s"] else "")
            for r in setup) + "."]
    notes = sorted({f"{r['engine']}: {n}" for r in results["rows"] for n in r["notes"]})
    if notes:
        lines += ["", "Engine settings:", ""] + [f"* {n}" for n in notes]
    return "\n".join(lines) + "\n"


def load_summary(load: dict, cores: int) -> str:
    before = load.get("before", {})
    la = before.get("loadavg")
    parts = [f"before the run, load average {la[0]:.2f} on {cores} cores" if la else "load average unknown"]
    if before.get("others_cores") is not None:
        parts.append(f"other processes used {before['others_cores']:.2f} cores")
    after = load.get("after", {})
    if after.get("loadavg"):
        parts.append(f"after it, load average {after['loadavg'][0]:.2f}")
    text = "; ".join(parts)
    if load.get("disturbed"):
        text += ". **Disturbed:** " + " ".join(load.get("warnings", []))
    else:
        text += ". Not disturbed (other processes below " f"{DISTURBED_OTHERS_CORES} cores in every cell)."
    return text


# ---------------------------------------------------------------- chart

def plot(results: dict, path: str, args) -> Optional[str]:
    """One panel per cell: each engine at its best thread count, images per second with the samples'
    min-max as error bars, the value on each bar.  Returns why there is no chart, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib)"
    env = results["environment"]
    cells = results["cells"]
    if not cells:
        return "no cell finished: no chart"
    groups = list(dict.fromkeys((c["arch"], c["dtype"]) for c in cells))
    batches = list(dict.fromkeys(c["batch"] for c in cells))
    panels = {(c["arch"], c["dtype"], c["batch"]): c for c in cells}
    n_bars = max(len(best_per_engine([r for r in results["rows"] if r["cell"] == c["index"]])) for c in cells)
    fig, axes = plt.subplots(len(groups), len(batches), squeeze=False,
                             figsize=(max(6.4 * len(batches), 9.0), (0.42 * n_bars + 1.4) * len(groups) + 1.8))
    colors = {"ours": "#e8590c", "peer": "#4c78a8", "eager": "#b0b0b0"}
    for gi, (arch, dtype) in enumerate(groups):
        for bi, batch in enumerate(batches):
            ax = axes[gi][bi]
            cell = panels.get((arch, dtype, batch))
            if cell is None:
                ax.axis("off")
                continue
            best = sorted(best_per_engine([r for r in results["rows"] if r["cell"] == cell["index"]]).values(),
                          key=lambda r: -r["images_per_s"])
            ys = range(len(best))
            ips = [r["images_per_s"] for r in best]
            lo = [r["images_per_s"] - r["batch"] / r["max_s"] for r in best]
            hi = [r["batch"] / r["min_s"] - r["images_per_s"] for r in best]
            kind = ["ours" if r["key"] in FAST_KEYS else "eager" if r["key"] in ("eager", "eager_cl", "torchvision")
                    else "peer" for r in best]
            bars = ax.barh(list(ys), ips, xerr=[lo, hi], capsize=3, color=[colors[k] for k in kind],
                           edgecolor=["black" if k == "ours" else "none" for k in kind],
                           hatch=None, error_kw={"elinewidth": 1, "ecolor": "#333333"})
            for bar, r in zip(bars, best):
                if not same_precision(r, dtype):
                    bar.set_hatch("//")
                    bar.set_alpha(0.6)
            ax.set_yticks(list(ys))
            labels = [f"{r['engine']} [{r['precision']}" + (f", {r['threads']} thr" if r["threads"] else "") + "]"
                      for r in best]
            ax.set_yticklabels(labels, fontsize=8)
            for tick, k in zip(ax.get_yticklabels(), kind):
                if k == "ours":
                    tick.set_fontweight("bold")
                    tick.set_color(colors["ours"])
            ax.invert_yaxis()
            top = max(b + h for b, h in zip(ips, hi))
            ax.set_xlim(0, top * 1.75)  # room for the value labels inside the axes
            for y, r, h in zip(ys, best, hi):
                ax.text(r["images_per_s"] + h + top * 0.02, y,
                        f"{r['images_per_s']:.0f}/s = {fmt_ms(r['ms_per_image'])} ms/image", va="center", fontsize=7.5,
                        fontweight="bold" if r["key"] in FAST_KEYS else "normal")
            if cell.get("skipped"):  # say which engines are missing, and that the reasons are in the tables
                names = ", ".join(dict.fromkeys(x["engine"] for x in cell["skipped"]))
                ax.text(0.99, 0.02, textwrap.fill(f"not run (see results.md): {names}", 60), transform=ax.transAxes,
                        ha="right", va="bottom", fontsize=7, color="#555555")
            ax.set_xlabel("images per second (higher is better)", fontsize=8)
            ax.tick_params(axis="x", labelsize=8)
            ax.grid(axis="x", alpha=0.3)
            title = f"{arch.capitalize()}, {dtype}, batch {batch}"
            if cell.get("disturbed"):
                ax.set_title(title + f"  (disturbed: others used {cell['load']['others_cores']:.1f} cores)",
                             fontsize=9, color="#c92a2a")
            else:
                ax.set_title(title, fontsize=10)
    threads = env["threads"]
    isa = env.get("cpu_flags") or {}
    present = [k for k in ("AVX2", "AVX-512", "AVX512-BF16", "AMX-BF16", "AMX-INT8") if isa.get(k)]
    what = env.get("gpu") or (f"{env['cpu']} ({env.get('cpu_id', '').replace('vendor_id ', '')}), "
                              f"{env['cpu_count']} cores, {' '.join(present) or 'no AVX2'}")
    thr = f"threads {'/'.join(map(str, threads))}, each engine at its best" if threads[0] is not None else ""
    facts = [", ".join(dict.fromkeys(c["dtype"] for c in cells)), thr, f"input {args.size}x{args.size}",
             f"median of {args.repeats} samples, error bars min-max", env["date"][:16].replace("T", " ") + " UTC"]
    lines = [f"MobileNetV3 inference on {what}", "; ".join(f for f in facts if f)]
    width = fig.get_figwidth() * 14  # characters that fit at fontsize 10
    text = "\n".join(textwrap.fill(line, int(width)) for line in lines)
    warn = []
    if env.get("mode") == "quick":
        warn.append("QUICK RUN: a smoke test, not a measurement")
    if results["load"].get("disturbed"):
        warn.append("machine busy during the run: panels marked disturbed are noisy")
    n_lines = text.count("\n") + 1 + len(warn)
    top = 1 - (0.2 + 0.18 * n_lines) / fig.get_figheight()
    fig.text(0.5, 0.995, text, ha="center", va="top", fontsize=10)
    if warn:
        fig.text(0.5, 0.995 - (text.count("\n") + 1) * 0.18 / fig.get_figheight(), "\n".join(warn), ha="center",
                 va="top", fontsize=10, color="#c92a2a", fontweight="bold")
    legend = [Patch(facecolor=colors["ours"], edgecolor="black", label="mnv3_fast"),
              Patch(facecolor=colors["peer"], label="ONNX Runtime, OpenVINO, torch.compile"),
              Patch(facecolor=colors["eager"], label="eager PyTorch, torchvision"),
              Patch(facecolor="white", edgecolor="#555555", hatch="//", label="at another precision than the panel's")]
    ncol = 4 if len(batches) > 1 else 2
    fig.legend(handles=legend, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    bottom = (0.25 + 0.2 * (4 // ncol)) / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, top))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # a reader (or an interrupted run) never sees half a file
