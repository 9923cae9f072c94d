"""Pure-PyTorch eager MobileNetV3: the numerical reference for the fused model.

Two layouts share one class (see :mod:`mnv3_fast.config`):

* ``variant="paper"`` matches torchvision's ``mobilenet_v3_large/small``
  parameter for parameter (in the same order), so torchvision weights can be
  copied in by position and give the same logits.
* ``variant="seed"`` uses the seed blog's module names and layout, so its
  checkpoints load with ``strict=True``.

The classifier head uses 1x1 convolutions on the pooled features (as in the
seed) rather than ``nn.Linear``; on a 1x1 map the two are the same operation.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BlockConfig, NetworkConfig, build_config

__all__ = [
    "HSwish",
    "HSigmoid",
    "SqueezeExcite",
    "SeedSqueezeBlock",
    "BlockParts",
    "MobileBlock",
    "MobileNetV3",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
]


class HSigmoid(nn.Module):
    """Hard sigmoid: relu6(x + 3) / 6."""

    def forward(self, x):
        return F.relu6(x + 3.0) / 6.0


class HSwish(nn.Module):
    """Hard swish: x * relu6(x + 3) / 6."""

    def forward(self, x):
        return x * (F.relu6(x + 3.0) / 6.0)


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "hswish":
        return HSwish()
    raise ValueError(f"activation must be 'relu' or 'hswish', got {name!r}")


def _global_avg_pool(x):
    return F.adaptive_avg_pool2d(x, 1)


class SqueezeExcite(nn.Module):
    """Paper squeeze-excite: pool, 1x1 conv down, ReLU, 1x1 conv up, hard sigmoid, rescale."""

    FC_NAMES = ("reduce", "expand")  # the two FC layers, as state_dict prefixes

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1, bias=True)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(squeeze_channels, channels, 1, bias=True)
        self.gate = HSigmoid()

    def fcs(self) -> tuple[nn.Conv2d, nn.Conv2d]:
        return self.reduce, self.expand

    def forward(self, x):
        scale = self.gate(self.expand(self.relu(self.reduce(_global_avg_pool(x)))))
        return x * scale


class SeedSqueezeBlock(nn.Module):
    """The seed's squeeze-excite: the same idea with ``nn.Linear`` layers on the pooled vector."""

    FC_NAMES = ("dense.0", "dense.2")  # the two FC layers, as state_dict prefixes

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.dense = nn.Sequential(
            nn.Linear(channels, squeeze_channels),
            nn.ReLU(),
            nn.Linear(squeeze_channels, channels),
            HSigmoid(),
        )

    def fcs(self) -> tuple[nn.Linear, nn.Linear]:
        return self.dense[0], self.dense[2]

    def forward(self, x):
        pooled = _global_avg_pool(x).flatten(1)
        scale = self.dense(pooled).view(x.shape[0], x.shape[1], 1, 1)
        return x * scale


def _depthwise_conv(cfg: BlockConfig, bias: bool) -> nn.Conv2d:
    # "Same" padding, so every map is ceil(size / stride) and even 1x1 maps work.
    padding = (cfg.kernel_size - 1) // 2 * cfg.dilation
    channels = cfg.expand_channels
    return nn.Conv2d(
        channels,
        channels,
        cfg.kernel_size,
        stride=cfg.stride,
        padding=padding,
        dilation=cfg.dilation,
        groups=channels,
        bias=bias,
    )


class BlockParts(NamedTuple):
    """A block's four parts, whatever the variant calls them (None where absent)."""

    expand: Optional[nn.Sequential]  # [1x1 conv, BN, act]
    depthwise: nn.Sequential  # [kxk depthwise conv, BN, act?]
    se: Optional[nn.Module]  # SqueezeExcite or SeedSqueezeBlock
    project: nn.Sequential  # [1x1 conv, BN, act?]


class MobileBlock(nn.Module):
    """Inverted residual block ("bneck") in the paper's or the seed's layout.

    paper: [1x1 expand, BN, act] -> kxk depthwise, BN, act -> [SE] -> 1x1 project, BN
    seed:  1x1 expand, BN, act -> kxk depthwise (bias), BN -> [SE] -> 1x1 project (bias), BN, act
    The input is added back when ``stride == 1`` and ``in == out`` in both layouts.
    """

    # The attribute (and state_dict) name of each part, per variant.
    PART_NAMES = {
        "paper": BlockParts("expand_conv", "depthwise_conv", "squeeze_excite", "project_conv"),
        "seed": BlockParts("conv", "depth_conv", "squeeze_block", "point_conv"),
    }

    def __init__(self, cfg: BlockConfig, variant: str, bn_eps: float, bn_momentum: float):
        super().__init__()
        self.config = cfg
        self.variant = variant
        self.use_residual = cfg.use_residual

        def bn(channels):
            return nn.BatchNorm2d(channels, eps=bn_eps, momentum=bn_momentum)

        exp = cfg.expand_channels
        if variant == "paper":
            if cfg.has_expand:
                self.expand_conv = nn.Sequential(
                    nn.Conv2d(cfg.in_channels, exp, 1, bias=False),
                    bn(exp),
                    _activation(cfg.activation),
                )
            else:
                self.expand_conv = None
            self.depthwise_conv = nn.Sequential(
                _depthwise_conv(cfg, bias=False),
                bn(exp),
                _activation(cfg.activation),
            )
            self.squeeze_excite = SqueezeExcite(exp, cfg.se_channels) if cfg.has_se else None
            self.project_conv = nn.Sequential(
                nn.Conv2d(exp, cfg.out_channels, 1, bias=False), bn(cfg.out_channels)
            )
        elif variant == "seed":
            # Module names must stay exactly these: they are the checkpoint keys.
            self.conv = nn.Sequential(
                nn.Conv2d(cfg.in_channels, exp, 1, bias=False), bn(exp), _activation(cfg.activation)
            )
            self.depth_conv = nn.Sequential(
                _depthwise_conv(cfg, bias=True),
                bn(exp),
            )
            self.squeeze_block = SeedSqueezeBlock(exp, cfg.se_channels) if cfg.has_se else None
            self.point_conv = nn.Sequential(
                nn.Conv2d(exp, cfg.out_channels, 1, bias=True),
                bn(cfg.out_channels),
                _activation(cfg.activation),
            )
        else:
            raise ValueError(f"variant must be 'paper' or 'seed', got {variant!r}")

    def parts(self) -> BlockParts:
        return BlockParts(*(getattr(self, name) for name in self.PART_NAMES[self.variant]))

    def forward(self, x):
        expand, depthwise, se, project = self.parts()
        out = x if expand is None else expand(x)
        out = depthwise(out)
        if se is not None:
            out = se(out)
        out = project(out)
        return x + out if self.use_residual else out


def _check_input(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of shape (N, 3, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"expected a 4-D input (N, 3, H, W), got a {x.dim()}-D tensor of shape {tuple(x.shape)}"
        )
    if x.shape[1] != 3:
        raise ValueError(
            f"expected 3 input channels (N, 3, H, W), got {x.shape[1]} channels "
            f"in a tensor of shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        dtype = str(x.dtype).replace("torch.", "")
        raise TypeError(
            f"MobileNetV3 input must be a floating-point tensor (float32, bfloat16, float16 or float64), "
            f"got {dtype}; convert and normalise images first (e.g. x.float() / 255)"
        )


class MobileNetV3(nn.Module):
    """MobileNetV3 classifier, eager reference implementation.

    Args:
        model_mode: "LARGE" or "SMALL" (any case).
        num_classes: classifier outputs.
        multiplier: width multiplier applied to every channel count.
        dropout_rate: dropout before the last 1x1 conv.
        variant: "paper" (torchvision-compatible) or "seed" (seed-blog checkpoints).
        config: a ready :class:`~mnv3_fast.config.NetworkConfig`; when given it
            is used as-is and the arguments above are ignored.
    """

    def __init__(
        self,
        model_mode="LARGE",
        num_classes=1000,
        multiplier=1.0,
        dropout_rate=0.2,
        variant="paper",
        *,
        config: NetworkConfig | None = None,
    ):
        super().__init__()
        if config is None:
            config = build_config(model_mode, num_classes, multiplier, dropout_rate, variant)
        self.config = config
        self.num_classes = config.num_classes
        is_seed = config.variant == "seed"

        def bn(channels):
            return nn.BatchNorm2d(channels, eps=config.bn_eps, momentum=config.bn_momentum)

        stem = config.stem_channels
        self.init_conv = nn.Sequential(
            nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=is_seed), bn(stem), HSwish()
        )
        self.block = nn.Sequential(
            *(
                MobileBlock(cfg, config.variant, config.bn_eps, config.bn_momentum)
                for cfg in config.blocks
            )
        )

        last_in, last = config.last_in_channels, config.last_channels
        # The seed puts a bias before BN, and in SMALL an SE between conv and BN.
        last_stage = [nn.Conv2d(last_in, last, 1, bias=is_seed)]
        if config.last_se_channels:
            last_stage.append(SeedSqueezeBlock(last, config.last_se_channels))
        last_stage += [bn(last), HSwish()]
        self.out_conv1 = nn.Sequential(*last_stage)

        # Pooling comes before out_conv2 (the paper's "efficient last stage"),
        # so these 1x1 convs act on a 1x1 map, like Linear layers.
        self.out_conv2 = nn.Sequential(
            nn.Conv2d(last, config.head_channels, 1, bias=True),
            HSwish(),
            nn.Dropout(config.dropout_rate),
            nn.Conv2d(config.head_channels, config.num_classes, 1, bias=True),
        )
        self._init_weights()

    def _init_weights(self):
        # Same scheme as torchvision's MobileNetV3.
        for module in self.modules():
            _init_module(module)

    def _stages_with_strides(self):
        """(module, stride) for every stage in order, as used by feature_maps."""
        yield self.init_conv, 2
        for block in self.block:
            yield block, block.config.stride
        yield self.out_conv1, 1

    def forward_features(self, x):
        """The feature map before global pooling: the output of ``out_conv1``."""
        _check_input(x)
        return self.out_conv1(self.block(self.init_conv(x)))

    def forward_head(self, features):
        """Global average pool, then the 1x1-conv classifier; returns (N, num_classes)."""
        return self.out_conv2(_global_avg_pool(features)).flatten(1)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def feature_maps(self, x):
        """Multi-scale features for dense prediction.

        Returns a list with one tensor per total stride 2, 4, 8, 16 and 32 (in
        that order): for each stride, the output of the *last* stage (stem,
        block, or ``out_conv1``) whose cumulative stride equals it. For an
        ``H x W`` input the map at stride ``s`` is ``ceil(H / s) x ceil(W / s)``.
        The stride-32 map is the output of ``out_conv1``, i.e. what
        :meth:`forward_features` returns. A custom config that never reaches a
        stride simply has no entry for it.
        """
        _check_input(x)
        by_stride = {}
        total_stride = 1
        out = x
        for module, stride in self._stages_with_strides():
            out = module(out)
            total_stride *= stride
            by_stride[total_stride] = out  # later stages at the same stride win
        return [by_stride[s] for s in (2, 4, 8, 16, 32) if s in by_stride]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last 1x1 conv by a freshly initialised one with ``num_classes`` outputs."""
        self.config = replace(self.config, num_classes=num_classes)  # validates num_classes
        old = self.out_conv2[3]
        new = nn.Conv2d(
            old.in_channels,
            num_classes,
            1,
            bias=True,
            device=old.weight.device,
            dtype=old.weight.dtype,
        )
        _init_module(new)
        self.out_conv2[3] = new
        self.num_classes = num_classes


def _init_module(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0, 0.01)
        nn.init.zeros_(module.bias)


def mobilenet_v3_large(**kwargs) -> MobileNetV3:
    """MobileNetV3-Large; keyword arguments as for :class:`MobileNetV3`."""
    return MobileNetV3(model_mode="LARGE", **kwargs)


def mobilenet_v3_small(**kwargs) -> MobileNetV3:
    """MobileNetV3-Small; keyword arguments as for :class:`MobileNetV3`."""
    return MobileNetV3(model_mode="SMALL", **kwargs)
