"""Shared timing and environment helpers for the benchmarks.

Engines are timed interleaved (one sample of each in turn), so a drift in the
machine's speed hits all of them alike and their ratios stay meaningful.
"""
from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, Optional

import torch


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _calibrate(fn: Callable, device: str, min_sample_s: float, probes: int = 5) -> int:
    """How many back-to-back calls make one CUDA sample last at least min_sample_s, from the median time
    of a few single calls (fewer for an engine whose calls are long), not from one stretch timed whole,
    which began with calls that ran cold."""
    times = []
    for _ in range(probes):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        if sum(times) >= 2 * min_sample_s:
            break
    return max(1, min(1 << 16, math.ceil(min_sample_s / max(statistics.median(times), 1e-9))))


def time_interleaved(fns: dict[str, Callable], repeats: int = 15, warmup: int = 3, device: str = "cpu",
                     min_sample_s: float = 0.05, settle_s: float = 0.02,
                     prepare: Optional[dict[str, Callable]] = None,
                     on_round: Optional[Callable[[int], None]] = None) -> dict[str, list[float]]:
    """Seconds per call of each function: `repeats` samples each, taken in turn after warm-up.

    Between two engines' samples the machine rests `settle_s`: thread pools
    (OpenMP's, ONNX Runtime's) spin-wait for a while after a call and would
    otherwise steal cores from the next engine's sample (measured on a 2-vCPU
    Xeon: torch's OpenMP worker kept spinning 4-7 ms after mnv3_fast's last
    call, OpenVINO's about 1 ms; 5 ms was too short).  A sample is a stretch
    of back-to-back calls lasting at least `min_sample_s`, so that what is
    timed is each engine's steady state, not the first call after another
    engine ran (which wakes parked threads and refills the caches: measured on
    a 2-vCPU Xeon, 2 ms samples made mnv3_fast's Large batch 1 9.1 ms against
    7.5 ms in 50 ms samples, and OpenVINO's 10.2 against 5.0; that first call
    took 2.5-3x a warm one).  On the CPU a sample runs calls until
    `min_sample_s` has passed: a count fixed in advance from one engine's
    calls, which ran cold or explored thread counts, held 7 calls of
    mnv3_fast's Large batch 1 against OpenVINO's 13, so the cold first call
    weighed twice as much.  On CUDA the count is calibrated once
    (`_calibrate`): checking the time after each call would synchronize.  `prepare[name]()`
    runs before each of that function's samples, untimed (torch's thread
    count, when engines at different counts are interleaved).  `on_round(i)`
    is called after warm-up (i = 0) and after each round of samples."""
    prepare = prepare or {}
    noop = lambda: None  # noqa: E731
    for name, fn in fns.items():
        prepare.get(name, noop)()
        for _ in range(warmup):
            fn()
    calls = {}  # (CUDA: calls per sample; on the CPU a sample runs until min_sample_s has passed)
    for name, fn in fns.items():
        if device == "cuda":
            prepare.get(name, noop)()
            calls[name] = _calibrate(fn, device, min_sample_s)
    if on_round:
        on_round(0)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats):
        for name, fn in fns.items():
            prepare.get(name, noop)()
            _sync(device)
            time.sleep(settle_s)
            start = time.perf_counter()
            n = calls.get(name, 0)
            if n:
                for _ in range(n):
                    fn()
                _sync(device)
            else:
                while True:
                    fn()
                    n += 1
                    if time.perf_counter() - start >= min_sample_s:
                        break
            samples[name].append((time.perf_counter() - start) / n)
        if on_round:
            on_round(i + 1)
    return samples


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def _cpuinfo() -> dict:
    """The first processor's fields from /proc/cpuinfo (empty off Linux)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


#: The ISA features that decide which kernels the engines can use, as /proc/cpuinfo names them.
ISA_FLAGS = {
    "AVX2": ("avx2", "fma"),
    "AVX-512": ("avx512f", "avx512bw", "avx512vl"),
    "AVX512-VNNI": ("avx512_vnni",),
    "AVX512-BF16": ("avx512_bf16",),
    "AMX-BF16": ("amx_bf16",),
    "AMX-INT8": ("amx_int8",),
}


def cpu_info() -> dict:
    """The CPU's name, identity and ISA flags (flags None where /proc/cpuinfo is missing)."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    isa = {name: all(f in flags for f in needs) for name, needs in ISA_FLAGS.items()} if flags else None
    return {
        "cpu": cpu_model(),
        "cpu_id": " ".join(f"{k} {info[k]}" for k in ("vendor_id", "cpu family", "model", "stepping") if k in info),
        "cpu_flags": isa,
    }


def isa_summary(isa: Optional[dict]) -> str:
    """'AVX2 yes, AVX-512 yes, AVX512-BF16 yes, AMX yes (BF16, INT8)' for the console and the Markdown."""
    if not isa:
        return "ISA flags unknown (no /proc/cpuinfo)"
    yes = lambda k: "yes" if isa.get(k) else "no"  # noqa: E731
    amx = [k.split("-")[1] for k in ("AMX-BF16", "AMX-INT8") if isa.get(k)]
    return (f"AVX2 {yes('AVX2')}, AVX-512 {yes('AVX-512')}, AVX512-VNNI {yes('AVX512-VNNI')}, "
            f"AVX512-BF16 {yes('AVX512-BF16')}, AMX {'yes (' + ', '.join(amx) + ')' if amx else 'no'}")


class LoadMonitor:
    """How much CPU other processes used while we measured: the machine's busy time (/proc/stat)
    minus this process's own (all its threads), per second of wall time, in cores; and the time
    the hypervisor gave to other guests (steal).  Linux only; elsewhere it reports None."""

    def __init__(self):
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.start()

    @staticmethod
    def _stat():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        user, nice, system, idle, iowait, irq, softirq, steal = fields
        return user + nice + system + irq + softirq, steal

    def start(self):
        self._t0, self._stat0, self._own0 = time.perf_counter(), self._stat(), self._own()

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system

    def stop(self) -> dict:
        """{'seconds', 'others_cores', 'steal_cores'} since start() (None values off Linux)."""
        elapsed = time.perf_counter() - self._t0
        stat = self._stat()
        out = {"seconds": round(elapsed, 3), "others_cores": None, "steal_cores": None}
        if stat is None or self._stat0 is None or elapsed <= 0:
            return out
        busy = (stat[0] - self._stat0[0]) / self._hz
        own = self._own() - self._own0
        out["others_cores"] = round(max(0.0, busy - own) / elapsed, 3)
        out["steal_cores"] = round((stat[1] - self._stat0[1]) / self._hz / elapsed, 3)
        return out


def machine_load(sample_s: float = 1.0) -> dict:
    """The load average and, over `sample_s` of sleeping, the CPU that other processes use now."""
    monitor = LoadMonitor()
    time.sleep(sample_s)
    out = monitor.stop()
    try:
        out["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        out["loadavg"] = None
    return out


def environment(device: str = "cpu") -> dict:
    """What a result was measured on."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **cpu_info(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if hasattr(os, "sched_getaffinity"):
        env["usable_cores"] = len(os.sched_getaffinity(0))  # what a container or taskset leaves us
    try:
        import mnv3_fast

        env["mnv3_fast"] = mnv3_fast.__version__
        env["mnv3_fast_path"] = os.path.dirname(os.path.abspath(mnv3_fast.__file__))
        env["mnv3_cpu_kernels"] = mnv3_fast.ops.HAS_CPU_KERNELS
        env["mnv3_extension_error"] = mnv3_fast.ops.EXTENSION_ERROR
    except ImportError:
        pass
    from importlib import metadata

    for package in ("onnxruntime", "openvino", "torchvision", "torchao"):
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env
