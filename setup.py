"""Build script for mnv3_fast's C++ CPU extension (``mnv3_fast._C``).

The extension is compiled against whatever torch is installed (2.6 or newer).
If it cannot be built (no compiler, no torch headers) the package still
installs and the ops fall back to their PyTorch references, with one warning
at import.  Set ``MNV3_REQUIRE_EXTENSION=1`` to make a failed build an error.

The kernels use ATen's ``Vectorized`` types.  They are compiled for AVX2+FMA
when the building CPU has them (like ``-march=native``, the binary then needs
such a CPU; the package checks this at import and falls back rather than
crash).  ``MNV3_CPU_ARCH=generic`` forces a portable build.
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


def _target_arch():
    wanted = os.environ.get("MNV3_CPU_ARCH", "auto").lower()
    if wanted not in ("auto", "avx2", "generic"):
        raise ValueError(f"MNV3_CPU_ARCH must be auto, avx2 or generic, got {wanted!r}")
    if wanted != "auto":
        return wanted
    is_x86 = platform.machine().lower() in ("x86_64", "amd64")
    return "avx2" if is_x86 and {"avx2", "fma", "f16c"} <= _cpu_flags() else "generic"


def _extension_build():
    """(ext_modules, cmdclass) for the C++ extension, or ([], {}) if torch is missing."""
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError as exc:  # no torch in the build environment
        print(f"mnv3_fast: not building the C++ extension ({exc})", file=sys.stderr)
        return [], {}

    arch = _target_arch()
    cxx_flags = ["-O3", "-fvisibility=hidden", "-Wno-unused-function"]
    if arch == "avx2":
        # ATen's vector headers select their AVX2 implementation from these macros.
        cxx_flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    else:
        cxx_flags += ["-DCPU_CAPABILITY=DEFAULT"]

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

    ext = CppExtension("mnv3_fast._C", SOURCES, extra_compile_args={"cxx": cxx_flags})
    return [ext], {"build_ext": BuildWithInfo.with_options(use_ninja=True)}


ext_modules, cmdclass = _extension_build()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
