"""Shared timing and environment helpers for the benchmarks.

Engines are timed interleaved (one sample of each in turn), so a drift in the
machine's speed hits all of them alike and their ratios stay meaningful.
"""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _calibrate(fn: Callable, device: str, min_sample_s: float) -> int:
    """How many calls make one sample last at least min_sample_s."""
    calls = 1
    while True:
        _sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_sample_s or calls >= 1 << 16:
            return calls
        calls = max(calls * 2, int(calls * min_sample_s / max(elapsed, 1e-9)) + 1)


def time_interleaved(fns: dict[str, Callable], repeats: int = 15, warmup: int = 3, device: str = "cpu",
                     min_sample_s: float = 0.002, settle_s: float = 0.005) -> dict[str, list[float]]:
    """Seconds per call of each function: `repeats` samples each, taken in turn after warm-up.

    Between two engines' samples the machine rests `settle_s`: thread pools
    (OpenMP's, ONNX Runtime's) spin-wait for a while after a call and would
    otherwise steal cores from the next engine's sample."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    calls = {name: _calibrate(fn, device, min_sample_s) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            time.sleep(settle_s)
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / calls[name])
    return samples


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str = "cpu") -> dict:
    """What a result was measured on."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    try:
        import mnv3_fast

        env["mnv3_fast"] = mnv3_fast.__version__
        env["mnv3_cpu_kernels"] = mnv3_fast.ops.HAS_CPU_KERNELS
    except ImportError:
        pass
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env
