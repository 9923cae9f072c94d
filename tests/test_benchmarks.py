"""benchmarks/run.py --quick on a tiny configuration: the JSON's schema, and fast == eager."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_quick_writes_results(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick", "--arch", "small", "--size", "64",
           "--batch", "1", "--repeats", "1", "--no-compile", "--engines", "eager,eager_cl,fast,fast_cl,onnxruntime",
           "--threads", "1", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "results.json") as f:
        data = json.load(f)
    env = data["environment"]
    for key in ("date", "command", "python", "torch", "cpu", "cpu_count", "torch_threads"):
        assert key in env, key
    assert env["torch_threads"] == 1
    rows = {r["engine"]: r for r in data["rows"]}
    assert set(rows) == {"eager (NCHW)", "eager (channels_last)", "mnv3_fast (NCHW)", "mnv3_fast (channels_last)",
                         "onnxruntime"}
    for row in rows.values():
        assert (row["arch"], row["dtype"], row["batch"]) == ("small", "fp32", 1)
        assert len(row["samples_s"]) == 1 and row["median_s"] > 0 and row["images_per_s"] > 0
        assert row["speedup"] > 0
        assert row["max_abs_diff"] < 1e-4, row  # every engine ran the same weights on the same input
    assert rows["eager (NCHW)"]["speedup"] == 1.0
    table = (tmp_path / "results.md").read_text()
    assert "mnv3_fast (channels_last)" in table and "images/s" in table


def test_unknown_engine_is_reported_and_the_rest_runs(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick", "--arch", "small", "--size", "32",
           "--batch", "1", "--repeats", "1", "--engines", "eager,warp_drive", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warp_drive" in result.stdout + result.stderr
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["engine"] for r in rows] == ["eager (NCHW)"]


def test_compile_budget_and_max_autotune_batches_are_reported(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick", "--arch", "small", "--size", "32",
           "--batch", "1", "--repeats", "1", "--engines", "eager,compile,compile_max", "--compile-budget-s", "0",
           "--max-autotune-batches", "256", "--threads", "1", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["engine"] for r in data["rows"]] == ["eager (NCHW)"]
    assert data["skipped"] == ["small fp32 b1 compile: the compile budget (0 s) is spent",
                               "small fp32 b1 compile_max: not at batch 1 (--max-autotune-batches 256)"]
    assert "Not measured: small fp32 b1 compile: the compile budget" in (tmp_path / "results.md").read_text()


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
