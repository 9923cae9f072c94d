"""Triton's real compiler on a machine without a GPU: the kernels a piece of code
launches, compiled for an NVIDIA target, with their resource usage.

    with compile_only(90) as launches:      # sm_90; nothing runs
        some_launcher(cpu_tensors...)       # every kernel[grid](...) compiles for sm_90
    for kernel in unique_kernels(launches):
        print(kernel.name, resources(kernel))   # registers, stack (spills), shared memory

    with record_launches() as launches:     # no compiling either: the launches and their arguments
        some_launcher(cpu_tensors...)

A stand-in for Triton's CUDA driver answers the questions the JIT asks (target,
device, stream, device properties) and takes the launch without running
anything, so the launchers run unchanged on CPU tensors: the variants compiled
are exactly the ones the code picks (constexprs, tile sizes, warps, pointer
alignment and integer specialisation from the real arguments).  Resources are
read off the cubin with `cuobjdump --dump-resource-usage` from triton's own
package; a nonzero STACK is register spilling (Triton kernels have no other
local arrays).

The Triton interpreter must be off in the process (TRITON_INTERPRET unset before
triton is imported); the tests run this in a subprocess for that reason.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from typing import Iterator, NamedTuple

import triton
from triton.backends.compiler import GPUTarget
from triton.runtime import driver as _driver
from triton.runtime.jit import JITFunction

# Per-SM opt-in shared memory limits (CUDA programming guide, compute capabilities table).
MAX_SHARED = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


class _StandInUtils:
    def __init__(self, arch: int):
        self.arch = arch

    def get_device_properties(self, device):
        return {"max_shared_mem": MAX_SHARED.get(self.arch, 99 * 1024), "multiprocessor_count": 132,
                "max_num_regs": 65536, "warpSize": 32, "sm_clock_rate": 0, "mem_clock_rate": 0, "mem_bus_width": 0}

    def load_binary(self, name, kernel, shared, device):
        return None, None, 0, 0, 1024  # module, function, n_regs, n_spills, max threads per block

    def unload_module(self, module):
        pass


class StandInDriver:
    """Answers the JIT's driver calls for an sm_<arch> GPU; launches do nothing."""

    def __init__(self, arch: int):
        self.arch = arch
        self.utils = _StandInUtils(arch)

    def get_current_target(self):
        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self):
        return 1000 + self.arch  # a device id per target, so the JIT's per-device caches never mix targets

    def get_current_stream(self, device=None):
        return 0

    def launcher_cls(self, src, metadata):
        return lambda *args, **kwargs: None

    def get_active_torch_device(self):
        import torch
        return torch.device("cpu")


class Launch(NamedTuple):
    kernel: object  # triton.compiler.CompiledKernel (has .name, .hash, .metadata, .asm)
    grid: tuple | None  # None for a grid given as a function


@contextlib.contextmanager
def compile_only(arch: int) -> Iterator[list]:
    """Within the block every Triton launch compiles for sm_<arch> and runs nothing; yields
    the list of `Launch`es, filled as they happen."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile_only needs the Triton interpreter off (TRITON_INTERPRET=1 is set)")
    launches: list = []
    original_run = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        kernel = original_run(self, *args, grid=grid, warmup=warmup, **kwargs)
        if not warmup:
            launches.append(Launch(kernel, None if callable(grid) else tuple(grid)))
        return kernel

    previous = getattr(_driver, "_active", None)
    _driver.set_active(StandInDriver(arch))
    JITFunction.run = run
    try:
        yield launches
    finally:
        JITFunction.run = original_run
        _driver._active = previous  # (reset_active() would create the real driver, which needs a GPU)


class Recorded(NamedTuple):
    name: str  # the kernel's name
    grid: tuple | None
    args: tuple  # the positional arguments (tensors as passed)
    kwargs: dict  # constexprs and launch options


@contextlib.contextmanager
def record_launches() -> Iterator[list]:
    """Within the block Triton launches are only recorded (kernel, grid, arguments): nothing
    compiles or runs, no driver is needed.  For counting launches and the bytes they move
    (benchmarks/gpu_model.py); the launchers must not use what a launch returns."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("record_launches needs the Triton interpreter off (TRITON_INTERPRET=1 is set)")
    launches: list = []
    original_run = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        launches.append(Recorded(self.__name__, None if callable(grid) else tuple(grid), args, kwargs))

    JITFunction.run = run
    try:
        yield launches
    finally:
        JITFunction.run = original_run


def unique_kernels(launches: list) -> list:
    """The distinct compiled kernels among `launches`, in first-launch order."""
    seen: dict = {}
    for launch in launches:
        seen.setdefault(launch.kernel.hash, launch.kernel)
    return list(seen.values())


class Resources(NamedTuple):
    registers: int
    stack: int  # bytes of local stack per thread: register spills
    shared: int  # bytes of shared memory per block (Triton's, dynamic)
    num_warps: int


_CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
_RESOURCES: dict = {}


def resources(kernel) -> Resources:
    """Registers, stack and shared memory of a compiled kernel, read off its cubin (cached by hash)."""
    if kernel.hash not in _RESOURCES:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            out = subprocess.run([_CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True, text=True,
                                 check=True).stdout
        match = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
        if match is None:
            raise RuntimeError(f"cuobjdump gave no resource line for {kernel.name}:\n{out}")
        reg, stack, static_shared, local = (int(v) for v in match.groups())
        _RESOURCES[kernel.hash] = Resources(reg, stack + local, static_shared + kernel.metadata.shared,
                                            kernel.metadata.num_warps)
    return _RESOURCES[kernel.hash]


def constexprs(kernel) -> dict:
    """The constexpr arguments a compiled kernel was specialised for, by name."""
    src = kernel.src
    names = src.fn.arg_names
    return {names[k[0]] if isinstance(k, tuple) else k: v for k, v in src.constants.items()}
