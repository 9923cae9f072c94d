"""The mnv3 torch ops (`torch.ops.mnv3.*`) and their Python entry points.

Each op lives in its own module with its fake kernel and autograd:
`activations` (hswish, hsigmoid), `dw_conv_bn_act`, `squeeze_excite`.
`reference` holds the plain-PyTorch reference of each.
"""
from . import reference
from ._library import EXTENSION_ERROR
from .activations import hsigmoid, hswish
from .dw_conv_bn_act import dw_conv_bn_act
from .fold_bn import fold_bn
from .squeeze_excite import squeeze_excite

#: True when the C++ CPU kernels are loaded (False: the references run instead).
HAS_CPU_KERNELS = EXTENSION_ERROR is None

__all__ = [
    "HAS_CPU_KERNELS", "EXTENSION_ERROR", "reference",
    "hswish", "hsigmoid", "dw_conv_bn_act", "squeeze_excite", "fold_bn",
]
