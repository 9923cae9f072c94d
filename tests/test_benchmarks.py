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
