"""The `mnv3` torch library: schemas, the C++ extension, and fallbacks.

Every schema is defined here, in Python, once.  The C++ extension
(`mnv3_fast._C`) only registers CPU kernels for these names, and the Triton
module registers CUDA kernels, so the package behaves the same with or without
either: an op with no compiled kernel for a device runs its PyTorch reference.
"""
from __future__ import annotations

import importlib
import os
import warnings
from typing import Callable

import torch

LIB = torch.library.Library("mnv3", "DEF")

#: Why the C++ extension is not in use (None when it is).
EXTENSION_ERROR: str | None = None


def cpu_has(features: set[str], unknown: bool) -> bool:
    """Whether this CPU's flags (/proc/cpuinfo) include all of `features`; `unknown` where they can't
    be read (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return features <= set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return unknown


def _shadowed_build() -> str | None:
    """Why _C is missing when this package is a source tree that hides an installed build, else None.

    `python -c`, `python -m` and the REPL put the current directory first on sys.path, so running
    them from a checkout imports the checkout's mnv3_fast (no _C) instead of the installed one."""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        from importlib import machinery, metadata

        if any(os.path.exists(os.path.join(package_dir, "_C" + s)) for s in machinery.EXTENSION_SUFFIXES):
            return None  # this tree has a build of its own: whatever failed, it is not shadowing

        for dist in metadata.distributions(name="mnv3_fast"):
            for file in dist.files or ():
                name = file.name
                if file.parent.name == "mnv3_fast" and name.startswith("_C.") and any(
                        name.endswith(suffix) for suffix in machinery.EXTENSION_SUFFIXES):
                    installed = os.path.dirname(os.path.abspath(str(dist.locate_file(file))))
                    if os.path.exists(os.path.join(installed, name)) and installed != package_dir:
                        return (f"this mnv3_fast is the source tree at {package_dir}, which has no compiled "
                                f"extension and hides the installed build at {installed} (python -c, -m and the REPL "
                                "put the current directory first on sys.path); run from another directory, or install the checkout "
                                "in development mode (pip install -e .) so that it holds the build")
    except Exception:  # metadata is only a diagnosis here: never fail the import over it
        return None
    return None


def _load_extension() -> str | None:
    """Imports mnv3_fast._C (registering its CPU kernels); returns why not, or None."""
    if os.environ.get("MNV3_DISABLE_EXTENSION") == "1":
        return "disabled by MNV3_DISABLE_EXTENSION=1"
    try:
        info = importlib.import_module("mnv3_fast._build_info")
    except ImportError:
        shadowed = _shadowed_build()
        if shadowed is not None:
            return shadowed
        return "mnv3_fast._C was not built (no compiler during install, or the build failed)"
    # A binary built against another torch can crash on load; refuse it instead.
    if info.TORCH_VERSION != torch.__version__:
        return f"mnv3_fast._C was built against torch {info.TORCH_VERSION}, but torch {torch.__version__} is installed"
    avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma"}
    needs = {"avx2": {"avx2", "fma"}, "avx512": avx512, "avx512_bf16": avx512 | {"avx512_bf16"}}
    if not cpu_has(needs.get(info.CPU_ARCH, set()), unknown=True):  # (unknown: trust the build)
        return f"mnv3_fast._C was built for {info.CPU_ARCH.upper()}, which this CPU lacks"
    try:
        importlib.import_module("mnv3_fast._C")
    except ImportError as exc:
        return _shadowed_build() or f"mnv3_fast._C failed to load: {exc}"
    return None


#: The Triton launchers, by op name, once mnv3_fast.ops.triton is registered for CUDA.
CUDA_KERNELS: dict = {}


def _cuda_kernel(name: str, reference_impl: Callable) -> Callable:
    """The op's CUDA kernel: its Triton launcher when registered, else the reference."""

    def kernel(*args):
        return CUDA_KERNELS.get(name, reference_impl)(*args)

    return kernel


def define(schema: str, reference_impl: Callable, fake: Callable) -> str:
    """Defines `mnv3::<schema>` with its fake kernel and its CUDA kernel (Triton,
    or the reference without triton), and the reference as the CPU kernel when
    the C++ extension is missing.  Returns the qualified name."""
    name = schema.split("(", 1)[0]
    LIB.define(schema)
    qualname = f"mnv3::{name}"
    torch.library.register_fake(qualname, fake, lib=LIB)
    LIB.impl(name, _cuda_kernel(name, reference_impl), "CUDA")
    if EXTENSION_ERROR is not None:
        LIB.impl(name, reference_impl, "CPU")
    return qualname


def define_triton(schema: str, reference_impl: Callable, fake: Callable, dtype_arg: int = 0) -> str:
    """Defines `mnv3::<schema>` like `define`, for an op whose CUDA kernel is a Triton launcher
    that computes in at most fp32 (so float64, like every other device, runs the reference;
    `dtype_arg` is the argument whose dtype decides).

    Where torch has `torch.library.triton_op` (2.6+) the op is one: torch.compile and export
    trace into its implementation and see the Triton launches (the launchers wrap their
    kernels in `torch.library.wrap_triton`) instead of an opaque call.  Without it, or without
    triton, the op is the same schema through `define`."""
    name, signature = schema.split("(", 1)
    if not hasattr(torch.library, "triton_op"):
        return define(schema, reference_impl, fake)
    from ._checks import TRITON_DTYPES

    def impl(*args):
        arg = args[dtype_arg]
        launcher = CUDA_KERNELS.get(name) if arg.device.type == "cuda" and arg.dtype in TRITON_DTYPES else None
        return (launcher or reference_impl)(*args)

    impl.__name__ = name
    op = torch.library.triton_op(f"mnv3::{name}", impl, mutates_args=(), schema="(" + signature)
    op.register_fake(fake)
    return f"mnv3::{name}"


#: The ops whose CUDA kernels are the same-named launchers of mnv3_fast.ops.triton.
TRITON_OPS = ("hswish", "hsigmoid", "dw_conv_bn_act", "squeeze_excite", "pw_conv_bn_act", "stem_conv", "se_gate",
              "classifier_head")


def register_triton_kernels() -> str | None:
    """Makes the Triton launchers the ops' CUDA kernels; returns why not, or None."""
    try:
        from . import triton as triton_ops
    except ImportError as exc:
        return f"triton is not available ({exc})"
    for name in TRITON_OPS:
        CUDA_KERNELS[name] = getattr(triton_ops, name)
    return None


EXTENSION_ERROR = _load_extension()
if EXTENSION_ERROR is not None:
    _fix = "" if "hides the installed build" in EXTENSION_ERROR else (
        " Reinstall with a C++ compiler and the torch you run (pip install --no-build-isolation .) to get the fast kernels.")
    warnings.warn(
        f"mnv3_fast: {EXTENSION_ERROR}; the mnv3 ops run their (slower) PyTorch references on the CPU.{_fix}",
        RuntimeWarning,
        stacklevel=2,
    )

__all__ = ["LIB", "EXTENSION_ERROR", "CUDA_KERNELS", "TRITON_OPS", "define", "define_triton", "register_triton_kernels"]
