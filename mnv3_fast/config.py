"""Layer tables and network configuration for MobileNetV3.

The tables are plain data so that the eager reference model and the fused
fast model are built from one source of truth. Two variants exist:

* ``"paper"``: the architecture of the MobileNetV3 paper as implemented by
  torchvision (``mobilenet_v3_large`` / ``mobilenet_v3_small``); with the same
  weights it produces the same numbers as torchvision.
* ``"seed"``: the layout of the seed blog's implementation, so that its
  checkpoints load unchanged. It differs from the paper in several places
  (biases after BN, activation after the projection instead of after the
  depthwise conv, a linear SE, a stride-2 block moved in LARGE, ...).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

__all__ = [
    "ACTIVATIONS",
    "MODES",
    "VARIANTS",
    "BlockConfig",
    "NetworkConfig",
    "PAPER_LARGE_BLOCKS",
    "PAPER_SMALL_BLOCKS",
    "SEED_LARGE_BLOCKS",
    "SEED_SMALL_BLOCKS",
    "build_config",
]

MODES = ("LARGE", "SMALL")
VARIANTS = ("paper", "seed")
ACTIVATIONS = ("relu", "hswish")

# Table abbreviations, as printed in the paper.
_ACTIVATION_NAMES = {"RE": "relu", "HS": "hswish"}
RE, HS = "RE", "HS"
SE, NO_SE = True, False


def _make_divisible(v, divisor=8, min_value=None):
    """Round ``v`` to the nearest multiple of ``divisor``, never below
    ``min_value`` (default ``divisor``) and never more than 10% below ``v``.
    """
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    # Make sure that rounding down does not remove more than 10% of the width.
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


@dataclass(frozen=True)
class BlockConfig:
    """One inverted-residual block ("bneck"), with channel counts already scaled."""

    in_channels: int
    kernel_size: int
    expand_channels: int
    out_channels: int
    se_channels: int  # width of the squeeze-excite bottleneck; 0 means no SE
    activation: str  # "relu" or "hswish"
    stride: int  # the depthwise conv's actual stride (1 in a dilated stage)
    dilation: int = 1

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {self.stride!r}")

    @property
    def use_residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels

    @property
    def has_expand(self) -> bool:
        """Whether the paper variant has a 1x1 expansion conv (the seed always has one)."""
        return self.expand_channels != self.in_channels

    @property
    def has_se(self) -> bool:
        return self.se_channels > 0


@dataclass(frozen=True)
class NetworkConfig:
    """A whole network: stem, blocks, last stage and classifier head."""

    variant: str
    stem_channels: int
    blocks: tuple[BlockConfig, ...]
    last_channels: int  # output of the last 1x1 conv before pooling (960 / 576)
    head_channels: int  # hidden width of the classifier (1280 / 1024)
    num_classes: int
    dropout_rate: float
    bn_eps: float
    bn_momentum: float
    last_se_channels: int = 0  # SE inside the last stage (seed SMALL only)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        _check_num_classes(self.num_classes)
        if not self.blocks:
            raise ValueError("a network needs at least one block, got none")
        if self.last_se_channels and self.variant != "seed":
            raise ValueError(
                f"last_se_channels is only used by the seed variant, got "
                f"{self.last_se_channels} for variant {self.variant!r}"
            )

    @property
    def last_in_channels(self) -> int:
        return self.blocks[-1].out_channels


# ---------------------------------------------------------------------------
# Paper variant (torchvision). Columns as in the paper's tables 1 and 2:
#   (in, kernel, expand, out, SE, activation, stride)
# ---------------------------------------------------------------------------
PAPER_LARGE_BLOCKS = (
    (16, 3, 16, 16, NO_SE, RE, 1),
    (16, 3, 64, 24, NO_SE, RE, 2),
    (24, 3, 72, 24, NO_SE, RE, 1),
    (24, 5, 72, 40, SE, RE, 2),
    (40, 5, 120, 40, SE, RE, 1),
    (40, 5, 120, 40, SE, RE, 1),
    (40, 3, 240, 80, NO_SE, HS, 2),
    (80, 3, 200, 80, NO_SE, HS, 1),
    (80, 3, 184, 80, NO_SE, HS, 1),
    (80, 3, 184, 80, NO_SE, HS, 1),
    (80, 3, 480, 112, SE, HS, 1),
    (112, 3, 672, 112, SE, HS, 1),
    (112, 5, 672, 160, SE, HS, 2),
    (160, 5, 960, 160, SE, HS, 1),
    (160, 5, 960, 160, SE, HS, 1),
)

PAPER_SMALL_BLOCKS = (
    (16, 3, 16, 16, SE, RE, 2),
    (16, 3, 72, 24, NO_SE, RE, 2),
    (24, 3, 88, 24, NO_SE, RE, 1),
    (24, 5, 96, 40, SE, HS, 2),
    (40, 5, 240, 40, SE, HS, 1),
    (40, 5, 240, 40, SE, HS, 1),
    (40, 5, 120, 48, SE, HS, 1),
    (48, 5, 144, 48, SE, HS, 1),
    (48, 5, 288, 96, SE, HS, 2),
    (96, 5, 576, 96, SE, HS, 1),
    (96, 5, 576, 96, SE, HS, 1),
)

# Unscaled widths outside the block tables: stem and classifier hidden width.
# The paper's last-stage width is derived (6 x the last block's output).
_PAPER_STEM = 16
_PAPER_HEAD = {"LARGE": 1280, "SMALL": 1024}
_PAPER_LAST_STAGE_FACTOR = 6

# ---------------------------------------------------------------------------
# Seed variant. Columns in the seed code's own order:
#   (in, out, kernel, stride, activation, SE, expand)
# Note LARGE differs from the paper: the stride-2 block is the 14th, not the
# 13th, and the 14th block expands to 672 instead of 960.
# ---------------------------------------------------------------------------
SEED_LARGE_BLOCKS = (
    (16, 16, 3, 1, RE, NO_SE, 16),
    (16, 24, 3, 2, RE, NO_SE, 64),
    (24, 24, 3, 1, RE, NO_SE, 72),
    (24, 40, 5, 2, RE, SE, 72),
    (40, 40, 5, 1, RE, SE, 120),
    (40, 40, 5, 1, RE, SE, 120),
    (40, 80, 3, 2, HS, NO_SE, 240),
    (80, 80, 3, 1, HS, NO_SE, 200),
    (80, 80, 3, 1, HS, NO_SE, 184),
    (80, 80, 3, 1, HS, NO_SE, 184),
    (80, 112, 3, 1, HS, SE, 480),
    (112, 112, 3, 1, HS, SE, 672),
    (112, 160, 5, 1, HS, SE, 672),
    (160, 160, 5, 2, HS, SE, 672),
    (160, 160, 5, 1, HS, SE, 960),
)

SEED_SMALL_BLOCKS = (
    (16, 16, 3, 2, RE, SE, 16),
    (16, 24, 3, 2, RE, NO_SE, 72),
    (24, 24, 3, 1, RE, NO_SE, 88),
    (24, 40, 5, 2, RE, SE, 96),
    (40, 40, 5, 1, RE, SE, 240),
    (40, 40, 5, 1, RE, SE, 240),
    (40, 48, 5, 1, HS, SE, 120),
    (48, 48, 5, 1, HS, SE, 144),
    (48, 96, 5, 2, HS, SE, 288),
    (96, 96, 5, 1, HS, SE, 576),
    (96, 96, 5, 1, HS, SE, 576),
)

# Unscaled widths outside the seed block tables; each is scaled on its own.
_SEED_STEM = 16
_SEED_LAST = {"LARGE": 960, "SMALL": 576}
_SEED_HEAD = {"LARGE": 1280, "SMALL": 1280}  # the seed keeps 1280 for SMALL too
_SEED_LAST_HAS_SE = {"LARGE": False, "SMALL": True}
_SE_REDUCTION = 4

# BatchNorm hyper-parameters: the paper's (as in torchvision and TF) and
# PyTorch's defaults, which the seed code uses.
_BN_SETTINGS = {"paper": (1e-3, 0.01), "seed": (1e-5, 0.1)}


def _normalize_mode(model_mode) -> str:
    if isinstance(model_mode, str) and model_mode.upper() in MODES:
        return model_mode.upper()
    raise ValueError(f"model_mode must be one of {MODES} (any case), got {model_mode!r}")


def _normalize_variant(variant) -> str:
    if isinstance(variant, str) and variant.lower() in VARIANTS:
        return variant.lower()
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def _check_multiplier(multiplier) -> float:
    is_number = isinstance(multiplier, numbers.Real) and not isinstance(multiplier, bool)
    if not is_number or not math.isfinite(multiplier) or multiplier <= 0:
        raise ValueError(f"multiplier must be a finite number > 0, got {multiplier!r}")
    return float(multiplier)


def _check_num_classes(num_classes) -> int:
    is_int = isinstance(num_classes, numbers.Integral) and not isinstance(num_classes, bool)
    if not is_int or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    return int(num_classes)


def _check_dropout(dropout_rate) -> float:
    is_number = isinstance(dropout_rate, numbers.Real) and not isinstance(dropout_rate, bool)
    if not is_number or not 0.0 <= dropout_rate <= 1.0:
        raise ValueError(f"dropout_rate must be a number in [0, 1], got {dropout_rate!r}")
    return float(dropout_rate)


def _paper_blocks(rows, multiplier):
    def scale(channels):
        return _make_divisible(channels * multiplier, 8)

    blocks = []
    for in_ch, kernel, expand, out_ch, has_se, act, stride in rows:
        expand = scale(expand)
        blocks.append(
            BlockConfig(
                in_channels=scale(in_ch),
                kernel_size=kernel,
                expand_channels=expand,
                out_channels=scale(out_ch),
                # torchvision rounds the SE width of the *scaled* expansion.
                se_channels=_make_divisible(expand // _SE_REDUCTION, 8) if has_se else 0,
                activation=_ACTIVATION_NAMES[act],
                stride=stride,
            )
        )
    return tuple(blocks)


def _seed_blocks(rows, multiplier):
    def scale(channels):
        return _make_divisible(channels * multiplier)

    blocks = []
    for in_ch, out_ch, kernel, stride, act, has_se, expand in rows:
        expand = scale(expand)
        blocks.append(
            BlockConfig(
                in_channels=scale(in_ch),
                kernel_size=kernel,
                expand_channels=expand,
                out_channels=scale(out_ch),
                # The seed's SqueezeBlock divides by 4 without rounding.
                se_channels=expand // _SE_REDUCTION if has_se else 0,
                activation=_ACTIVATION_NAMES[act],
                stride=stride,
            )
        )
    return tuple(blocks)


def build_config(
    model_mode="LARGE",
    num_classes=1000,
    multiplier=1.0,
    dropout_rate=0.2,
    variant="paper",
) -> NetworkConfig:
    """Scale the raw layer table of ``model_mode`` / ``variant`` by ``multiplier``."""
    mode = _normalize_mode(model_mode)
    variant = _normalize_variant(variant)
    multiplier = _check_multiplier(multiplier)
    num_classes = _check_num_classes(num_classes)
    dropout_rate = _check_dropout(dropout_rate)
    bn_eps, bn_momentum = _BN_SETTINGS[variant]

    if variant == "paper":
        rows = PAPER_LARGE_BLOCKS if mode == "LARGE" else PAPER_SMALL_BLOCKS
        blocks = _paper_blocks(rows, multiplier)
        stem = _make_divisible(_PAPER_STEM * multiplier, 8)
        last = _PAPER_LAST_STAGE_FACTOR * blocks[-1].out_channels
        head = _make_divisible(_PAPER_HEAD[mode] * multiplier, 8)
        last_se = 0
    else:
        rows = SEED_LARGE_BLOCKS if mode == "LARGE" else SEED_SMALL_BLOCKS
        blocks = _seed_blocks(rows, multiplier)
        stem = _make_divisible(_SEED_STEM * multiplier)
        last = _make_divisible(_SEED_LAST[mode] * multiplier)
        head = _make_divisible(_SEED_HEAD[mode] * multiplier)
        last_se = last // _SE_REDUCTION if _SEED_LAST_HAS_SE[mode] else 0

    return NetworkConfig(
        variant=variant,
        stem_channels=stem,
        blocks=blocks,
        last_channels=last,
        head_channels=head,
        num_classes=num_classes,
        dropout_rate=dropout_rate,
        bn_eps=bn_eps,
        bn_momentum=bn_momentum,
        last_se_channels=last_se,
    )
