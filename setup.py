"""Build script for mnv3_fast's C++ CPU extension (``mnv3_fast._C``).

The extension is compiled against whatever torch is installed (2.6 or newer).
If it cannot be built (no compiler, no torch headers) the package still
installs and the ops fall back to their PyTorch references, with one warning
at import.  Set ``MNV3_REQUIRE_EXTENSION=1`` to make a failed build an error.

The kernels use ATen's ``Vectorized`` types.  They are compiled for the widest
of AVX-512 with AVX512-BF16, AVX-512, AVX2+FMA or plain C++ that the building
CPU has (like ``-march=native``: the binary then needs such a CPU; the package
checks this at import and falls back rather than crash).
``MNV3_CPU_ARCH=avx512_bf16|avx512|avx2|generic`` chooses explicitly.
AVX512-BF16 (Sapphire Rapids, Zen 4) converts fp32 to bf16 in one instruction
where ATen's vectors take eight; bf16 kernels store through it.
"""
import os
import platform
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
SOURCES = sorted(
    os.path.join("csrc", name) for name in os.listdir(os.path.join(ROOT, "csrc")) if name.endswith(".cpp")
)


def _cpu_flags():
    """The CPU feature flags of this (the building) machine, Linux only."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


ARCH_FEATURES = {  # what each build target needs from the CPU (as /proc/cpuinfo names it), widest first
    "avx512_bf16": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx2", "fma", "f16c"},
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "f16c"},
    "avx2": {"avx2", "fma", "f16c"},
}
ARCH_FLAGS = {  # ATen's vector headers select their implementation from the CPU_CAPABILITY macros
    "avx512_bf16": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mavx2", "-mfma", "-mf16c",
                    "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "generic": ["-DCPU_CAPABILITY=DEFAULT"],
}


def _target_arch():
    wanted = os.environ.get("MNV3_CPU_ARCH", "auto").lower()
    if wanted not in ("auto", *ARCH_FLAGS):
        raise ValueError(f"MNV3_CPU_ARCH must be auto, {', '.join(ARCH_FLAGS)}, got {wanted!r}")
    if wanted != "auto":
        return wanted
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "generic"
    flags = _cpu_flags()
    return next((arch for arch, needs in ARCH_FEATURES.items() if needs <= flags), "generic")


def _extension_build():
    """(ext_modules, cmdclass) for the C++ extension, or ([], {}) if torch is missing."""
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError as exc:  # no torch in the build environment
        print(f"mnv3_fast: not building the C++ extension ({exc})", file=sys.stderr)
        return [], {}

    arch = _target_arch()
    # at::parallel_for is an inline OpenMP region compiled into our code: without
    # -fopenmp it silently runs on one thread.
    # -g0: Python's default flags ask for debug info, which for the kernels'
    # many template instances takes about as long to emit as the code itself.
    cxx_flags = ["-O3", "-g0", "-fopenmp", "-fvisibility=hidden", "-Wno-unused-function"] + ARCH_FLAGS[arch]

    class BuildWithInfo(BuildExtension):
        """Records what the extension was built against, so import can refuse a mismatch."""

        def run(self):
            try:
                super().run()
            except Exception as exc:  # compiler missing or broken: install without the extension
                if os.environ.get("MNV3_REQUIRE_EXTENSION") == "1":
                    raise
                print(f"mnv3_fast: C++ extension build failed, using PyTorch fallbacks ({exc})", file=sys.stderr)
                return
            info = os.path.join(os.path.dirname(self.get_ext_fullpath("mnv3_fast._C")), "_build_info.py")
            with open(info, "w") as f:
                f.write("# Written by setup.py when mnv3_fast._C was built.\n")
                f.write(f"TORCH_VERSION = {torch.__version__!r}\n")
                f.write(f"CPU_ARCH = {arch!r}\n")

    ext = CppExtension("mnv3_fast._C", SOURCES, extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildWithInfo.with_options(use_ninja=True)}


ext_modules, cmdclass = _extension_build()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
