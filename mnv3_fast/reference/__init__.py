"""Eager pure-PyTorch MobileNetV3, the numerical reference for the fused kernels."""

from .model import (
    HSigmoid,
    HSwish,
    MobileBlock,
    MobileNetV3,
    SeedSqueezeBlock,
    SqueezeExcite,
    mobilenet_v3_large,
    mobilenet_v3_small,
)

__all__ = [
    "MobileNetV3",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "MobileBlock",
    "SqueezeExcite",
    "SeedSqueezeBlock",
    "HSwish",
    "HSigmoid",
]
