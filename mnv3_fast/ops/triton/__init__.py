"""Triton kernels for the mnv3 ops, one module per op (kernel + launcher).

The launchers take the torch ops' arguments and run on whatever device the
tensors are on: CUDA tensors on the GPU, CPU tensors under the Triton
interpreter (``TRITON_INTERPRET=1``, set before this module is imported),
which is how the CPU test suite checks them.  On a machine with CUDA and
triton they are registered as the ops' CUDA kernels, so ``torch.ops.mnv3.*``
picks them by device.  Fake kernels and autograd are the ops' own (shared with
the CPU kernels).  Each module also has a `launch` function over preallocated
outputs, without checks, which the CUDA backend calls with its prepared plan.

`aot` compiles the kernels for an NVIDIA target without a GPU (the AOT checks).

Importing this module needs triton; ``mnv3_fast`` itself imports without it.
"""
from .activations import hsigmoid, hswish
from .dw_conv_bn_act import dw_conv_bn_act
from .pw_conv_bn_act import classifier_head, pw_conv_bn_act
from .se_gate import se_gate
from .squeeze_excite import squeeze_excite
from .stem_conv import stem_conv

__all__ = ["hswish", "hsigmoid", "dw_conv_bn_act", "squeeze_excite", "pw_conv_bn_act", "classifier_head",
           "se_gate", "stem_conv"]
