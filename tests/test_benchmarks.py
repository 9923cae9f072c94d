"""benchmarks/run.py: one tiny run of every CPU precision (the JSON's schema, the console table, the
Markdown and the chart), the output folder never overwritten, the arguments, the load monitor,
the standing's arithmetic, and that run.py imports the installed mnv3_fast rather than the checkout's."""
import json
import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCH)

import _report as R  # noqa: E402
import run as RUN  # noqa: E402
from _timing import ISA_FLAGS, LoadMonitor  # noqa: E402

ENGINES = "eager,eager_cl,fast,fast_cl,onnxruntime,openvino"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One --quick run at 32x32, batch 2, 1 thread, fp32 + bf16 + int8 (about half a minute)."""
    out = tmp_path_factory.mktemp("run")
    cmd = [sys.executable, os.path.join(BENCH, "run.py"), "--quick", "--arch", "small", "--size", "32", "--batch", "2",
           "--dtype", "fp32,bf16,int8", "--repeats", "1", "--engines", ENGINES, "--threads", "1", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(out / "results.json") as f:
        return out, result.stdout, json.load(f)


def test_json_schema_machine_and_load(tiny_run):
    out, _, data = tiny_run
    env = data["environment"]
    for key in ("date", "command", "python", "torch", "cpu", "cpu_id", "cpu_flags", "cpu_count", "threads", "mode",
                "mnv3_fast_path", "mnv3_cpu_kernels", "wall_s"):
        assert key in env, key
    assert env["mode"] == "quick" and env["threads"] == [1]
    if sys.platform.startswith("linux"):
        assert set(env["cpu_flags"]) == set(ISA_FLAGS) and all(isinstance(v, bool) for v in env["cpu_flags"].values())
    load = data["load"]
    for key in ("before", "after", "disturbed", "warnings", "threshold_cores"):
        assert key in load, key
    assert isinstance(load["disturbed"], bool) and isinstance(load["warnings"], list)
    assert load["disturbed"] == bool(load["warnings"])
    assert {"others_cores", "steal_cores", "loadavg"} <= set(load["before"])
    assert [(c["dtype"], c["batch"]) for c in data["cells"]] == [("fp32", 2), ("bf16", 2), ("int8", 2)]
    for cell in data["cells"]:
        assert {"others_cores", "steal_cores", "seconds"} <= set(cell["load"]) and isinstance(cell["disturbed"], bool)
        assert cell["standing"]["verdict"]
    assert (out / "results.md").stat().st_size > 0 and (out / "log.txt").exists()
    assert (out / "results.png").stat().st_size > 10_000  # a real chart, not an empty canvas


def test_rows_precisions_and_accuracy(tiny_run):
    _, _, data = tiny_run
    rows = {(r["dtype"], r["engine"]): r for r in data["rows"]}
    for r in data["rows"]:
        assert r["threads"] == 1 and len(r["samples_s"]) == 1 and r["ms_per_image"] > 0
        assert r["ms_per_image"] == pytest.approx(r["median_s"] / 2 * 1e3)
        assert 0 <= r["top1_agreement"] <= 1 and r["accuracy_images"] == 16
    for engine in ("eager (NCHW)", "eager (channels_last)", "mnv3_fast (NCHW)", "mnv3_fast (channels_last)", "onnxruntime"):
        row = rows[("fp32", engine)]
        assert row["precision"] == "fp32"
        assert row["rel_diff"] < 1e-4, row  # the same weights on the same input
    assert rows[("fp32", "eager (NCHW)")]["speedup"] == 1.0 and rows[("fp32", "eager (NCHW)")]["rel_diff"] == 0.0
    # bf16 against fp32: these BN-calibrated random networks amplify rounding (eager bf16 itself differs by
    # tens of percent), so mnv3_fast's bf16 is held to eager bf16's distance, not to an absolute bound.
    eager_bf16 = rows[("bf16", "eager (NCHW)")]
    for engine in ("eager (NCHW)", "mnv3_fast (NCHW)", "mnv3_fast (channels_last)"):
        row = rows[("bf16", engine)]
        precision = "bf16 autocast" if engine.startswith("mnv3_fast") else "bf16"  # (CPU: the fp32 image in)
        assert row["precision"] == precision and 0 < row["rel_diff"] <= 2 * eager_bf16["rel_diff"] + 0.02, row
    # int8: the eager fp32 baseline, ONNX Runtime's static QDQ model; mnv3_fast.quantize where it exists
    assert rows[("int8", "eager (NCHW)")]["precision"] == "fp32"
    assert rows[("int8", "onnxruntime")]["precision"] == "int8" and rows[("int8", "onnxruntime")]["rel_diff"] < 1
    cells = {c["dtype"]: c for c in data["cells"]}
    skipped = {(c["dtype"], s["engine"]): s["reason"] for c in data["cells"] for s in c["skipped"]}
    assert "no bf16" in skipped[("bf16", "onnxruntime")]
    import mnv3_fast

    if not hasattr(mnv3_fast, "quantize"):
        assert "mnv3_fast.quantize not available" in skipped[("int8", "mnv3_fast (NCHW)")]
        assert "mnv3_fast.quantize not available" in cells["int8"]["standing"]["verdict"]
    else:  # random weights quantize poorly (ONNX Runtime's int8 is off by tens of percent too), but not to garbage
        row = rows[("int8", "mnv3_fast (NCHW)")]
        assert row["precision"] == "int8" and 0 < row["rel_diff"] < 1, row
        assert cells["int8"]["standing"]["ratio"] is not None


def test_console_table(tiny_run):
    out, stdout, data = tiny_run
    assert stdout.count(str(out)) >= 2  # the folder, at the start and at the end
    assert "CPU " in stdout and "ISA " in stdout and "AVX-512" in stdout
    assert "\\|" not in stdout and "|---" not in stdout  # aligned columns, not Markdown
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Small fp32 batch 2"))
    header, rule = lines[start + 1], lines[start + 2]
    assert "ms/image, 1 thread" in header and "speed-up vs eager" in header and "top-1 agree" in header
    assert set(rule.strip()) <= {"-", " "}
    body = lines[start + 3:start + 3 + len([r for r in data["rows"] if r["dtype"] == "fp32"])]
    column = header.index("precision")
    for line in body:
        assert len(line) == len(header), (line, header)  # every row as wide as the header
        assert line[column:column + 4] == "fp32", line  # and its columns where the header's are
    assert any(line.lstrip().startswith("=> mnv3_fast (") and " than the fastest other fp32 engine" in line for line in lines)
    assert "Standing (each engine at its best thread count):" in stdout


def test_markdown_keeps_the_tables(tiny_run):
    out, _, data = tiny_run
    md = (out / "results.md").read_text()
    assert "**Quick run**" in md and data["environment"]["cpu"] in md and "AVX-512" in md
    assert md.count("| engine | precision | ms/image, 1 thread |") == 3
    assert "**Standing:**" in md and "Load while timed" in md


def test_an_existing_run_is_never_overwritten(tiny_run):
    out, _, _ = tiny_run
    before = (out / "results.json").read_bytes()
    cmd = [sys.executable, os.path.join(BENCH, "run.py"), "--quick", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "already holds a results.json" in result.stdout + result.stderr
    assert (out / "results.json").read_bytes() == before


def test_default_folders_are_new_each_time(tmp_path, monkeypatch):
    monkeypatch.setattr(RUN, "HERE", str(tmp_path))
    args = RUN.parse_args(["--quick"])
    first, second = RUN.output_folder(args), RUN.output_folder(args)
    assert first != second and os.path.isdir(first) and os.path.isdir(second)
    name = os.path.basename(first)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d{6}_cpu_quick(-\d+)?", name), name
    assert os.path.dirname(first) == os.path.join(str(tmp_path), "runs")
    with open(os.path.join(ROOT, ".gitignore")) as f:
        assert "benchmarks/runs/" in f.read()


def test_arguments():
    args = RUN.parse_args(["--quick"])
    assert "compile" not in args.engines  # --quick never compiles
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert args.threads == sorted({1, cores}) and args.dtype == ["fp32"] and args.repeats == 3
    assert "compile" in RUN.parse_args([]).engines
    assert RUN.parse_args(["--threads", "2,1"]).threads == [1, 2]
    for bad in (["--engines", "eager,warp_drive"], ["--dtype", "int4"], ["--threads", "0"], ["--arch", "medium"]):
        with pytest.raises(SystemExit):
            RUN.parse_args(bad)


def test_load_monitor_sees_a_busy_core():
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        monitor = LoadMonitor()
        time.sleep(1.0)
        load = monitor.stop()
    finally:
        burner.kill()
        burner.wait()
    if load["others_cores"] is None:
        pytest.skip("no /proc/stat")
    assert load["others_cores"] > 0.6, load  # the burner's core (and whatever else runs), not our own idle time
    assert R.cell_disturbed(load)
    assert not R.cell_disturbed({"others_cores": 0.05, "steal_cores": 0.0})


def _row(engine, key, precision, threads, ms):
    return {"engine": engine, "key": key, "precision": precision, "threads": threads, "median_s": ms / 1e3,
            "ms_per_image": ms}


def test_standing_compares_best_thread_counts_at_the_same_precision():
    rows = [_row("mnv3_fast (NCHW)", "fast", "fp32", 1, 5.0), _row("mnv3_fast (NCHW)", "fast", "fp32", 2, 4.0),
            _row("onnxruntime", "onnxruntime", "fp32", 1, 4.4), _row("onnxruntime", "onnxruntime", "fp32", 2, 6.0),
            _row("openvino (default)", "openvino_default", "bf16", 1, 2.0)]
    s = R.standing({"dtype": "fp32", "skipped": []}, rows)
    assert s["ratio"] == pytest.approx(1.1)
    assert s["mnv3_fast"]["threads"] == 2 and s["fastest_other"]["threads"] == 1
    assert s["verdict"].startswith("mnv3_fast (NCHW) (fp32, 2 threads) is 1.10x faster than") and "onnxruntime" in s["verdict"]
    assert [r["engine"] for r in s["faster_at_other_precision"]] == ["openvino (default)"]
    slower = R.standing({"dtype": "fp32", "skipped": []}, rows[:2] + [_row("openvino", "openvino", "fp32", 1, 2.0)])
    assert "2.00x slower than" in slower["verdict"]
    missing = R.standing({"dtype": "int8", "skipped": [{"key": "fast", "engine": "mnv3_fast (NCHW)",
                                                         "reason": "mnv3_fast.quantize not available"}]},
                         [_row("onnxruntime", "onnxruntime", "int8", 1, 3.0)])
    assert missing["ratio"] is None and "mnv3_fast.quantize not available" in missing["verdict"]


def test_library_messages_stay_off_the_console(capfd):
    import logging
    import warnings

    with RUN.LibraryMessages() as messages:
        warnings.warn("a stray library warning")
        logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found")
    captured = capfd.readouterr()
    assert "stray" not in captured.err + captured.out and "CUDA runtime" not in captured.err + captured.out
    assert any("stray library warning" in m for m in messages.messages)
    assert any("No CUDA runtime is found" in m for m in messages.messages)


def test_run_py_imports_the_installed_package_not_the_checkout(tmp_path):
    """`python benchmarks/run.py` from a checkout root: the checkout's mnv3_fast (unbuilt after a
    non-editable install) must not shadow the installed one.  Here the "checkout" is a copy whose
    mnv3_fast refuses to import, and the "installed" package is this repository (PYTHONPATH)."""
    import shutil

    checkout = tmp_path / "checkout"
    shutil.copytree(BENCH, checkout / "benchmarks", ignore=shutil.ignore_patterns("results", "runs", "__pycache__"))
    (checkout / "mnv3_fast").mkdir()
    (checkout / "mnv3_fast" / "__init__.py").write_text("raise ImportError('the checkout copy was imported')\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    shadowed = subprocess.run([sys.executable, "-c", "import mnv3_fast"], cwd=checkout, env=env, capture_output=True,
                              text=True, timeout=120)
    assert "the checkout copy was imported" in shadowed.stderr  # python -c would pick the checkout's copy
    result = subprocess.run([sys.executable, "benchmarks/run.py", "--help"], cwd=checkout, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "the checkout copy was imported" not in result.stderr


def test_reports_without_thread_counts(tmp_path):
    """On CUDA there are no thread counts (threads [None]): the table, Markdown and chart still render."""
    import argparse

    rows = []
    for engine, key, ms in (("eager (NCHW)", "eager", 2.0), ("mnv3_fast (channels_last)", "fast_cl", 1.0),
                            ("mnv3_fast (channels_last) +cudagraph", "fast_cl", 0.5), ("torchvision", "torchvision", 2.5)):
        s = [ms / 1e3 * 0.9, ms / 1e3, ms / 1e3 * 1.2]
        rows.append(dict(_row(engine, key, "fp16", None, ms), cell=0, arch="large", dtype="fp16", batch=1, samples_s=s,
                         min_s=min(s), max_s=max(s), images_per_s=1e3 / ms, min_ms_per_image=min(s) * 1e3,
                         max_ms_per_image=max(s) * 1e3, rel_diff=1e-3, top1_agreement=1.0, accuracy_images=16,
                         first_call_s=0.1, setup_s=0.0, notes=[]))
    cell = {"index": 0, "arch": "large", "dtype": "fp16", "batch": 1, "size": 224, "repeats": 3, "skipped": [],
            "load": {"others_cores": 0.0, "steal_cores": 0.0, "seconds": 1.0}, "disturbed": False}
    cell["standing"] = R.standing(cell, rows)
    assert cell["standing"]["mnv3_fast"]["engine"] == "mnv3_fast (channels_last) +cudagraph"
    env = {"cpu": "some CPU", "cpu_id": "", "cpu_flags": None, "cpu_count": 16, "gpu": "Some GPU", "torch": "2.x",
           "python": "3.x", "date": "2026-01-01T00:00:00+00:00", "command": "run.py --device cuda", "threads": [None],
           "mode": "full"}
    results = {"environment": env, "load": {"before": {}, "after": {}, "disturbed": False, "warnings": []},
               "cells": [cell], "rows": rows}
    text = R.console_cell(cell, rows, [None], 16)
    assert "ms/image " in text and "thread" not in text and "=> mnv3_fast (channels_last) +cudagraph (fp16)" in text
    args = argparse.Namespace(size=224, repeats=3, warmup=1)
    assert "| engine | precision | ms/image |" in R.markdown(results, args)
    assert R.plot(results, str(tmp_path / "chart.png"), args) is None
    assert (tmp_path / "chart.png").stat().st_size > 10_000


def test_compile_budget_and_max_autotune_batches_are_reported(tmp_path):
    """The GPU check's time bounds: compiling engines past --compile-budget-s, and compile_max off its
    --max-autotune-batches, are skipped and say so (not --quick: that drops compiling engines anyway)."""
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--arch", "small", "--size", "32",
           "--batch", "1", "--repeats", "1", "--engines", "eager,compile,compile_max", "--compile-budget-s", "0",
           "--max-autotune-batches", "256", "--threads", "1", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["engine"] for r in data["rows"]] == ["eager (NCHW)"]
    assert [(s["key"], s["reason"]) for s in data["cells"][0]["skipped"]] == [
        ("compile", "the compile budget (0 s, --compile-budget-s) is spent"),
        ("compile_max", "not at batch 1 (--max-autotune-batches 256)")]
    assert "the compile budget (0 s, --compile-budget-s) is spent" in (tmp_path / "results.md").read_text()


def test_gpu_check_dry_run_and_the_traffic_model(tmp_path):
    """benchmarks/gpu_check.sh's CPU-side steps (DRY_RUN=1): the GPU steps are listed as skipped and the
    traffic model (benchmarks/gpu_model.py) runs; its numbers are consistent."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # (the model records launches)
    env.update(DRY_RUN="1", OUT=str(tmp_path), PYTHONPATH=ROOT)
    result = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh")], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (tmp_path / "gpu_check.log").read_text()
    for name in ("machine", "install", "cuda tests", "kernels", "model benchmark"):
        assert f"=== {name}: skipped (DRY_RUN=1" in log
    assert "=== traffic model: exit 0" in log and "gpu_check: ok" in log
    out = tmp_path / "model.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_model.py"), "--json", str(out)], env=env,
                   check=True, capture_output=True, timeout=300)
    rows = {(r["model"], r["design"], r["batch"]): r for r in json.loads(out.read_text())}

    from mnv3_fast import config

    for model in ("large", "small"):
        blocks = config.build_config(model.upper()).blocks
        # stem, per block [expand] + dw + [SE gate] + project, pooled last stage, head's two GEMMs
        expected = 1 + sum(b.has_expand + 2 + b.has_se for b in blocks) + 1 + 2
        assert rows[(model, "this backend", 1)]["launches"] == expected
        for batch in (1, 256):
            eager, mine, ideal = (rows[(model, d, batch)]["mb_per_image"] for d in
                                  ("eager (torchvision)", "this backend", "ideal block-fused"))
            assert eager > mine > ideal > 0
        assert rows[(model, "eager (reference)", 256)]["mb_per_image"] > rows[(model, "eager (torchvision)", 256)]["mb_per_image"]
