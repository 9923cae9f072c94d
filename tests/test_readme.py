"""The README's commands and CI agree: CI installs and tests exactly as the README says."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def test_readme_opens_with_benchmark_and_test_commands():
    first_block = re.search(r"```bash\n(.*?)```", read("README.md"), re.S).group(1)
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert commands == ['pip install ".[bench]" && python benchmarks/run.py', 'pip install -e ".[test]" && python -m pytest']


def test_ci_runs_the_readme_test_command():
    readme, ci = read("README.md"), read(".ci/run")
    test_command = 'pip install -e ".[test]" && python -m pytest'
    assert test_command in readme.split("## Tests", 1)[1]
    install, run = test_command.split(" && ")
    ci_lines = [line.strip() for line in ci.splitlines()]
    assert install in ci_lines and run in ci_lines
    assert ci_lines.index(install) < ci_lines.index(run)
    assert "python3 -m venv .venv" in ci_lines  # a fresh environment, not the developer's


def test_quick_start_runs_as_written():
    quick_start = read("README.md").split("## Quick start", 1)[1]
    code = re.search(r"```python\n(.*?)```", quick_start, re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md (quick start)", "exec"), namespace)
    assert namespace["logits"].shape == (8, 1000)
    with __import__("torch").inference_mode():
        assert (namespace["fast"](namespace["x"]) - namespace["tv"](namespace["x"])).abs().max() < 1e-5
