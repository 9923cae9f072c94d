"""mnv3_fast: MobileNetV3 (Large and Small) on fused custom kernels.

* `mnv3_fast.ops`: the fused torch ops (`torch.ops.mnv3.*`) with their
  PyTorch references in `mnv3_fast.ops.reference`.
* `mnv3_fast.reference`: the plain eager MobileNetV3, the numerical ground truth.
* `mnv3_fast.MobileNetV3`: the drop-in fast model (same arguments and state_dict).
"""
from . import ops, reference
from .convert import convert, from_pretrained_state_dict
from .model import MobileNetV3, mobilenet_v3_large, mobilenet_v3_small
from .ops import fold_bn

__version__ = "0.1.0"
__all__ = ["convert", "from_pretrained_state_dict", "MobileNetV3", "mobilenet_v3_large", "mobilenet_v3_small", "ops", "reference", "fold_bn", "__version__"]
