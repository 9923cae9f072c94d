"""The mnv3 torch ops (`torch.ops.mnv3.*`) and their Python entry points.

Each op lives in its own module with its fake kernel and autograd:
`activations` (hswish, hsigmoid), `dw_conv_bn_act`, `squeeze_excite`, and
`cpu_program` (a whole CPU inference forward as one op, used by the CPU
backend).  `reference_ops` holds the plain-PyTorch reference of each.
"""
import warnings

import torch

from . import reference_ops
from ._library import EXTENSION_ERROR, register_triton_kernels
from .activations import hsigmoid, hswish
from .cpu_program import run_cpu_program
from .dw_conv_bn_act import dw_conv_bn_act
from .squeeze_excite import squeeze_excite

#: True when the C++ CPU kernels are loaded (False: the references run instead).
HAS_CPU_KERNELS = EXTENSION_ERROR is None

#: Why the Triton CUDA kernels are not in use (None when they are, or when there is no GPU).
TRITON_ERROR = register_triton_kernels() if torch.cuda.is_available() else None
if TRITON_ERROR is not None:
    warnings.warn(f"mnv3_fast: {TRITON_ERROR}; the mnv3 ops run their PyTorch references on CUDA", RuntimeWarning)

__all__ = [
    "HAS_CPU_KERNELS", "EXTENSION_ERROR", "TRITON_ERROR", "reference_ops",
    "hswish", "hsigmoid", "dw_conv_bn_act", "squeeze_excite", "run_cpu_program",
]
