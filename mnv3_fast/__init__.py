"""mnv3_fast: MobileNetV3 (Large and Small) on fused custom kernels.

* `mnv3_fast.ops`: the fused torch ops (`torch.ops.mnv3.*`) with their
  PyTorch references in `mnv3_fast.ops.reference`.
* `mnv3_fast.reference`: the plain eager MobileNetV3, the numerical ground truth.
"""
from . import ops, reference
from .ops import fold_bn

__version__ = "0.1.0"
__all__ = ["ops", "reference", "fold_bn", "__version__"]
