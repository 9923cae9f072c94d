"""The mnv3 torch ops (`torch.ops.mnv3.*`) and their Python entry points.

Each op lives in its own module with its fake kernel and autograd:
`activations` (hswish, hsigmoid), `dw_conv_bn_act`, `squeeze_excite`, and
`cpu_program` (a whole CPU inference forward as one op, used by the CPU
backend); and for the CUDA backend `pw_conv_bn_act` (1x1 conv GEMM with
residual, SE gate and pooled output), `stem_conv`, `se_gate` and
`classifier_head`.  `reference_ops` holds the plain-PyTorch reference of each.
"""
import warnings

import torch

from . import reference_ops
from ._library import EXTENSION_ERROR, register_triton_kernels
from .activations import hsigmoid, hswish
from .classifier_head import classifier_head
from .cpu_program import run_cpu_program
from .dw_conv_bn_act import dw_conv_bn_act
from .pw_conv_bn_act import pw_conv_bn_act
from .se_gate import se_gate
from .squeeze_excite import squeeze_excite
from .stem_conv import stem_conv

#: True when the C++ CPU kernels are loaded (False: the references run instead).
HAS_CPU_KERNELS = EXTENSION_ERROR is None

#: Why the Triton CUDA kernels are not in use (None when they are, or when there is no GPU).
TRITON_ERROR = register_triton_kernels() if torch.cuda.is_available() else None
if TRITON_ERROR is not None:
    warnings.warn(f"mnv3_fast: {TRITON_ERROR}; the mnv3 ops run their PyTorch references on CUDA", RuntimeWarning)

__all__ = [
    "HAS_CPU_KERNELS", "EXTENSION_ERROR", "TRITON_ERROR", "reference_ops",
    "hswish", "hsigmoid", "dw_conv_bn_act", "squeeze_excite", "run_cpu_program",
    "pw_conv_bn_act", "stem_conv", "se_gate", "classifier_head",
]
