"""mnv3_fast: MobileNetV3 (Large and Small) on fused custom kernels.

The layers, in the order data flows through them:

* `mnv3_fast.reference`: the plain eager MobileNetV3, the numerical ground truth.
* `mnv3_fast.ops`: the fused torch ops (`torch.ops.mnv3.*`) with their
  PyTorch references in `mnv3_fast.ops.reference_ops`.
* `mnv3_fast.plan`: the BN-folded plan of a model, and the cache of it.
* `mnv3_fast.backends`: the ways to run a plan (CPU program, CUDA, generic, reference).
* `mnv3_fast.MobileNetV3`: the drop-in fast model (same arguments and state_dict).
"""
from . import backends, ops, plan, reference
from .convert import convert, from_pretrained_state_dict
from .model import MobileNetV3, mobilenet_v3_large, mobilenet_v3_small
from .plan import fold_bn
from .quantized import QuantizedMobileNetV3, quantize

__version__ = "0.1.0"
__all__ = ["convert", "from_pretrained_state_dict", "MobileNetV3", "mobilenet_v3_large", "mobilenet_v3_small", "quantize", "QuantizedMobileNetV3", "ops", "reference", "plan", "backends", "fold_bn", "__version__"]
