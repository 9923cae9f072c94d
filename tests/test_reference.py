"""Tests for the eager reference MobileNetV3 (mnv3_fast.reference) and its config tables."""

from __future__ import annotations

import dataclasses
import functools
import io
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mnv3_fast.config import (
    PAPER_LARGE_BLOCKS,
    PAPER_SMALL_BLOCKS,
    SEED_LARGE_BLOCKS,
    SEED_SMALL_BLOCKS,
    _make_divisible,
    build_config,
)
from mnv3_fast.reference import (
    HSigmoid,
    HSwish,
    MobileBlock,
    MobileNetV3,
    SeedSqueezeBlock,
    SqueezeExcite,
    mobilenet_v3_large,
    mobilenet_v3_small,
)
from mnv3_fast.testing import calibrate_bn_

MODES = ("LARGE", "SMALL")
VARIANTS = ("paper", "seed")
MULTIPLIERS = (0.35, 0.5, 0.75, 1.0, 1.25)
TORCHVISION_BUILDERS = {
    "LARGE": torchvision.models.mobilenet_v3_large,
    "SMALL": torchvision.models.mobilenet_v3_small,
}


def _randn(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator)


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=None)
def _eval_model(mode, variant, multiplier=1.0, num_classes=1000) -> MobileNetV3:
    """Shared eval-mode models; tests that mutate a model build their own."""
    torch.manual_seed(0)
    return MobileNetV3(mode, num_classes, multiplier, variant=variant).eval()


# ---------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------


def test_make_divisible_follows_torchvision_rule():
    assert _make_divisible(16 * 0.35) == 8  # never below the divisor
    assert _make_divisible(72 * 0.75) == 56  # 54 rounds to the nearest multiple of 8
    assert _make_divisible(20) == 24  # 16 would lose more than 10%, so go up
    assert _make_divisible(1280 * 1.25) == 1600
    assert _make_divisible(3, divisor=8, min_value=16) == 16


def test_build_config_scales_paper_like_torchvision():
    cfg = build_config("large", multiplier=0.75)
    assert cfg.stem_channels == 16
    assert cfg.blocks[-1].out_channels == 120
    assert cfg.last_channels == 6 * 120
    assert cfg.head_channels == _make_divisible(1280 * 0.75)
    assert cfg.blocks[3].se_channels == _make_divisible(cfg.blocks[3].expand_channels // 4)
    assert (cfg.bn_eps, cfg.bn_momentum) == (1e-3, 0.01)


def test_build_config_seed_scales_every_width_independently():
    cfg = build_config("SMALL", multiplier=1.0, variant="seed")
    assert (cfg.last_channels, cfg.head_channels, cfg.last_se_channels) == (576, 1280, 144)
    assert [b.se_channels for b in cfg.blocks][:2] == [4, 0]  # 16 // 4, no rounding up to 8
    assert (cfg.bn_eps, cfg.bn_momentum) == (1e-5, 0.1)


def test_block_config_is_frozen():
    cfg = build_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.blocks[0].stride = 2


# ---------------------------------------------------------------------------
# parameter counts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, variant, expected",
    [
        ("LARGE", "paper", 5_483_032),
        ("SMALL", "paper", 2_542_856),
        ("LARGE", "seed", 5_152_518),
        ("SMALL", "seed", 3_111_462),
    ],
)
def test_exact_parameter_counts(mode, variant, expected):
    with torch.device("meta"):  # counting needs shapes only, not initialised weights
        model = MobileNetV3(mode, 1000, 1.0, variant=variant)
    assert _param_count(model) == expected


@pytest.mark.parametrize("multiplier", [0.5, 0.75, 1.0, 1.25])
@pytest.mark.parametrize("mode", MODES)
def test_paper_parameter_count_matches_torchvision(mode, multiplier):
    with torch.device("meta"):
        ours = MobileNetV3(mode, 1000, multiplier, variant="paper")
        theirs = TORCHVISION_BUILDERS[mode](width_mult=multiplier)
    assert _param_count(ours) == _param_count(theirs)


def test_builders_pick_the_mode():
    with torch.device("meta"):
        assert _param_count(mobilenet_v3_large()) == 5_483_032
        assert _param_count(mobilenet_v3_small(variant="seed")) == 3_111_462


# ---------------------------------------------------------------------------
# output shapes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("multiplier", MULTIPLIERS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
def test_output_shape_at_odd_size(mode, variant, multiplier):
    model = _eval_model(mode, variant, multiplier)
    with torch.no_grad():
        out = model(_randn(1, 3, 97, 97))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [224, 193])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
def test_output_shape_at_full_size(mode, variant, size):
    model = _eval_model(mode, variant)
    with torch.no_grad():
        features = model.forward_features(_randn(1, 3, size, size))
        out = model.forward_head(features)
    assert features.shape == (
        1,
        model.config.last_channels,
        math.ceil(size / 32),
        math.ceil(size / 32),
    )
    assert out.shape == (1, 1000)


def test_custom_num_classes_and_non_square_input():
    model = MobileNetV3("SMALL", num_classes=10, multiplier=0.5, variant="paper").eval()
    with torch.no_grad():
        assert model(_randn(2, 3, 64, 97)).shape == (2, 10)


def test_tiny_input_still_works():
    # Padding keeps every map at least 1x1, so even 16x16 gives a proper answer.
    model = _eval_model("LARGE", "paper")
    with torch.no_grad():
        out = model(_randn(1, 3, 16, 16))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------
# numerical parity with torchvision (paper variant)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_paper_variant_matches_torchvision(mode):
    torch.manual_seed(1)
    theirs = TORCHVISION_BUILDERS[mode]().eval()
    ours = MobileNetV3(mode, variant="paper").eval()
    calibrate_bn_(theirs, seed=2)

    their_state = theirs.state_dict()
    our_state = ours.state_dict()
    assert len(their_state) == len(our_state)
    copied = {}
    for (our_key, our_value), (their_key, their_value) in zip(
        our_state.items(), their_state.items()
    ):
        if our_value.shape != their_value.shape:
            # torchvision's classifier is nn.Linear; ours is a 1x1 conv on the pooled map.
            assert their_key.startswith("classifier.") and our_key.startswith("out_conv2."), (
                our_key,
                their_key,
            )
            assert our_value.shape == (*their_value.shape, 1, 1), (our_key, their_key)
            their_value = their_value.view(our_value.shape)
        copied[our_key] = their_value
    ours.load_state_dict(copied, strict=True)

    # In float64: with calibrated BN statistics the network amplifies float32 rounding differences
    # between the two hard-swish implementations to ~1e-3 of the logits.
    x = _randn(2, 3, 97, 97, seed=3).double()
    with torch.no_grad():
        expected = theirs.double()(x)
        got = ours.double()(x)
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10 * scale)


# ---------------------------------------------------------------------------
# residual connections
# ---------------------------------------------------------------------------


def _table_strides_and_widths(mode, variant):
    """(stride, in, out) for each row of the raw tables, read independently of the config code."""
    if variant == "paper":
        rows = PAPER_LARGE_BLOCKS if mode == "LARGE" else PAPER_SMALL_BLOCKS
        return [(row[6], row[0], row[3]) for row in rows]
    rows = SEED_LARGE_BLOCKS if mode == "LARGE" else SEED_SMALL_BLOCKS
    return [(row[3], row[0], row[1]) for row in rows]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
def test_residuals_exactly_where_stride_one_and_same_width(mode, variant):
    model = MobileNetV3(mode, variant=variant).eval()
    expected = [
        stride == 1 and c_in == c_out
        for stride, c_in, c_out in _table_strides_and_widths(mode, variant)
    ]
    assert [block.use_residual for block in model.block] == expected
    assert any(expected) and not all(expected)

    # Behaviour, not just the flag: zero the projection's BN so the branch
    # outputs 0; a residual block then returns its input, the others return 0.
    last_layer = "project_conv" if variant == "paper" else "point_conv"
    with torch.no_grad():
        for block in model.block:
            bn = getattr(block, last_layer)[1]
            bn.weight.zero_()
            bn.bias.zero_()
            x = _randn(1, block.config.in_channels, 8, 8, seed=4)
            out = block(x)
            if block.use_residual:
                assert torch.equal(out, x)
            else:
                assert not out.any()


# ---------------------------------------------------------------------------
# state_dict layout
# ---------------------------------------------------------------------------


def test_seed_large_state_dict_keys():
    keys = set(MobileNetV3("LARGE", variant="seed").state_dict())
    expected = {
        "init_conv.0.weight",
        "init_conv.0.bias",
        "init_conv.1.running_mean",
        "block.0.conv.0.weight",
        "block.0.depth_conv.0.bias",
        "block.3.squeeze_block.dense.0.weight",
        "block.3.squeeze_block.dense.2.bias",
        "block.0.point_conv.1.weight",
        "out_conv1.0.weight",
        "out_conv2.0.weight",
        "out_conv2.3.weight",
    }
    assert expected <= keys
    assert "block.0.conv.0.bias" not in keys  # the seed's expansion conv has no bias
    assert "block.0.squeeze_block.dense.0.weight" not in keys


def test_seed_small_state_dict_keys():
    keys = set(MobileNetV3("SMALL", variant="seed").state_dict())
    assert {
        "out_conv1.1.dense.0.weight",
        "out_conv1.1.dense.2.bias",
        "out_conv1.2.running_var",
    } <= keys
    assert "block.0.squeeze_block.dense.0.weight" in keys


def test_paper_state_dict_keys():
    keys = set(MobileNetV3("LARGE", variant="paper").state_dict())
    expected = {
        "init_conv.0.weight",
        "block.0.depthwise_conv.0.weight",
        "block.0.project_conv.1.running_var",
        "block.1.expand_conv.0.weight",
        "block.3.squeeze_excite.reduce.weight",
        "block.3.squeeze_excite.expand.bias",
        "out_conv1.0.weight",
        "out_conv2.0.bias",
        "out_conv2.3.weight",
    }
    assert expected <= keys
    # BN follows every conv, so none of these has a bias; block 0 does not expand (16 -> 16).
    assert not {"init_conv.0.bias", "out_conv1.0.bias", "block.1.expand_conv.0.bias"} & keys
    assert not any(key.startswith("block.0.expand_conv") for key in keys)


# ---------------------------------------------------------------------------
# A private re-implementation of the seed blog's MobileNetV3, written from the
# blog's description, used only to produce "foreign" checkpoints. It keeps the
# seed's own conventions (avg_pool2d over the whole map, in-place activations,
# Linear SE) so that loading into variant="seed" is a real compatibility check.
# ---------------------------------------------------------------------------


class _SeedHSwish(nn.Module):
    def __init__(self, inplace=True):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return F.relu6(x + 3.0, self.inplace) / 6.0 * x


class _SeedHSigmoid(nn.Module):
    def __init__(self, inplace=True):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return F.relu6(x + 3.0, inplace=self.inplace) / 6.0


class _SeedSqueezeBlock(nn.Module):
    def __init__(self, exp_size, divide=4):
        super().__init__()
        self.dense = nn.Sequential(
            nn.Linear(exp_size, exp_size // divide),
            nn.ReLU(inplace=True),
            nn.Linear(exp_size // divide, exp_size),
            _SeedHSigmoid(),
        )

    def forward(self, x):
        batch, channels, height, width = x.size()
        out = F.avg_pool2d(x, kernel_size=[height, width]).view(batch, -1)
        return self.dense(out).view(batch, channels, 1, 1) * x


class _SeedMobileBlock(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride, nonlinear, se, exp_size):
        super().__init__()
        activation = nn.ReLU if nonlinear == "RE" else _SeedHSwish
        padding = (kernel_size - 1) // 2
        self.use_connect = stride == 1 and in_channels == out_channels
        self.SE = se
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, exp_size, 1, 1, 0, bias=False),
            nn.BatchNorm2d(exp_size),
            activation(inplace=True),
        )
        self.depth_conv = nn.Sequential(
            nn.Conv2d(exp_size, exp_size, kernel_size, stride, padding, groups=exp_size),
            nn.BatchNorm2d(exp_size),
        )
        if se:
            self.squeeze_block = _SeedSqueezeBlock(exp_size)
        self.point_conv = nn.Sequential(
            nn.Conv2d(exp_size, out_channels, 1, 1, 0),
            nn.BatchNorm2d(out_channels),
            activation(inplace=True),
        )

    def forward(self, x):
        out = self.depth_conv(self.conv(x))
        if self.SE:
            out = self.squeeze_block(out)
        out = self.point_conv(out)
        return x + out if self.use_connect else out


# The seed's own layer lists, columns (in, out, kernel, stride, NL, SE, exp),
# kept separate from mnv3_fast.config so that a table typo there is caught.
_SEED_LAYERS = {
    "LARGE": [
        [16, 16, 3, 1, "RE", False, 16],
        [16, 24, 3, 2, "RE", False, 64],
        [24, 24, 3, 1, "RE", False, 72],
        [24, 40, 5, 2, "RE", True, 72],
        [40, 40, 5, 1, "RE", True, 120],
        [40, 40, 5, 1, "RE", True, 120],
        [40, 80, 3, 2, "HS", False, 240],
        [80, 80, 3, 1, "HS", False, 200],
        [80, 80, 3, 1, "HS", False, 184],
        [80, 80, 3, 1, "HS", False, 184],
        [80, 112, 3, 1, "HS", True, 480],
        [112, 112, 3, 1, "HS", True, 672],
        [112, 160, 5, 1, "HS", True, 672],
        [160, 160, 5, 2, "HS", True, 672],
        [160, 160, 5, 1, "HS", True, 960],
    ],
    "SMALL": [
        [16, 16, 3, 2, "RE", True, 16],
        [16, 24, 3, 2, "RE", False, 72],
        [24, 24, 3, 1, "RE", False, 88],
        [24, 40, 5, 2, "RE", True, 96],
        [40, 40, 5, 1, "RE", True, 240],
        [40, 40, 5, 1, "RE", True, 240],
        [40, 48, 5, 1, "HS", True, 120],
        [48, 48, 5, 1, "HS", True, 144],
        [48, 96, 5, 2, "HS", True, 288],
        [96, 96, 5, 1, "HS", True, 576],
        [96, 96, 5, 1, "HS", True, 576],
    ],
}


class _SeedMobileNetV3(nn.Module):
    def __init__(self, model_mode="LARGE", num_classes=1000, multiplier=1.0, dropout_rate=0.0):
        super().__init__()
        init_conv_out = _make_divisible(16 * multiplier)
        self.init_conv = nn.Sequential(
            nn.Conv2d(3, init_conv_out, 3, stride=2, padding=1),
            nn.BatchNorm2d(init_conv_out),
            _SeedHSwish(inplace=True),
        )
        blocks = []
        for c_in, c_out, kernel, stride, nonlinear, se, exp in _SEED_LAYERS[model_mode]:
            blocks.append(
                _SeedMobileBlock(
                    _make_divisible(c_in * multiplier),
                    _make_divisible(c_out * multiplier),
                    kernel,
                    stride,
                    nonlinear,
                    se,
                    _make_divisible(exp * multiplier),
                )
            )
        self.block = nn.Sequential(*blocks)

        last_in, last_out = (160, 960) if model_mode == "LARGE" else (96, 576)
        last_in, last_out = (
            _make_divisible(last_in * multiplier),
            _make_divisible(last_out * multiplier),
        )
        last_stage = [nn.Conv2d(last_in, last_out, 1, 1)]
        if model_mode == "SMALL":
            last_stage.append(_SeedSqueezeBlock(last_out))
        last_stage += [nn.BatchNorm2d(last_out), _SeedHSwish(inplace=True)]
        self.out_conv1 = nn.Sequential(*last_stage)

        head = _make_divisible(1280 * multiplier)
        self.out_conv2 = nn.Sequential(
            nn.Conv2d(last_out, head, 1, 1),
            _SeedHSwish(inplace=True),
            nn.Dropout(dropout_rate),
            nn.Conv2d(head, num_classes, 1, 1),
        )

    def forward(self, x):
        out = self.out_conv1(self.block(self.init_conv(x)))
        batch, channels, height, width = out.size()
        out = F.avg_pool2d(out, kernel_size=[height, width])
        return self.out_conv2(out).view(batch, -1)


@pytest.mark.parametrize("mode, multiplier", [("LARGE", 1.0), ("SMALL", 1.0), ("LARGE", 0.75)])
def test_seed_checkpoint_loads_strictly_and_matches(mode, multiplier):
    torch.manual_seed(5)
    seed_model = _SeedMobileNetV3(mode, num_classes=100, multiplier=multiplier).eval()
    calibrate_bn_(seed_model, seed=6)
    buffer = io.BytesIO()
    torch.save(seed_model.state_dict(), buffer)
    buffer.seek(0)

    ours = MobileNetV3(mode, num_classes=100, multiplier=multiplier, variant="seed").eval()
    ours.load_state_dict(torch.load(buffer, weights_only=True), strict=True)

    # Pooling is computed by different ops (avg_pool2d vs adaptive pool), so allow rounding only, in float64
    # (with calibrated BN statistics the network amplifies float32 rounding to ~1e-5 of the logits).
    x = _randn(2, 3, 97, 97, seed=7).double()
    with torch.no_grad():
        expected = seed_model.double()(x.clone())
        got = ours.double()(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10 * expected.abs().max().item())


# ---------------------------------------------------------------------------
# modes: eval / train
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_eval_is_deterministic(variant):
    model = _eval_model("SMALL", variant)
    x = _randn(2, 3, 64, 64, seed=8)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_mode_updates_batchnorm_statistics(variant):
    model = MobileNetV3("SMALL", multiplier=0.5, variant=variant).train()
    bn = model.block[-1].project_conv[1] if variant == "paper" else model.block[-1].point_conv[1]
    before_mean, before_var = bn.running_mean.clone(), bn.running_var.clone()
    with torch.no_grad():
        model(_randn(2, 3, 64, 64, seed=9))
    assert bn.num_batches_tracked.item() == 1
    assert not torch.equal(bn.running_mean, before_mean)
    assert not torch.equal(bn.running_var, before_var)


# ---------------------------------------------------------------------------
# input and argument validation
# ---------------------------------------------------------------------------


def test_three_dimensional_input_is_rejected():
    model = _eval_model("SMALL", "paper")
    x = _randn(3, 64, 64)
    for method in (model, model.forward_features, model.feature_maps):
        with pytest.raises(
            ValueError, match=r"4-D input \(N, 3, H, W\), got a 3-D tensor of shape \(3, 64, 64\)"
        ):
            method(x)


def test_wrong_channel_count_is_rejected():
    model = _eval_model("SMALL", "seed")
    with pytest.raises(ValueError, match=r"expected 3 input channels .* got 1 channels"):
        model(_randn(1, 1, 64, 64))


def test_unknown_mode_is_rejected():
    with pytest.raises(
        ValueError, match=r"model_mode must be one of \('LARGE', 'SMALL'\).*got 'MEDIUM'"
    ):
        MobileNetV3("MEDIUM")


def test_mode_is_case_insensitive():
    assert build_config("small") == build_config("SMALL")


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match=r"variant must be one of \('paper', 'seed'\), got 'tf'"):
        MobileNetV3(variant="tf")


@pytest.mark.parametrize("multiplier", [0, -0.5, float("nan"), float("inf"), "1.0"])
def test_bad_multiplier_is_rejected(multiplier):
    with pytest.raises(ValueError, match=r"multiplier must be a finite number > 0, got"):
        MobileNetV3(multiplier=multiplier)


@pytest.mark.parametrize("num_classes", [0, -3, 2.5])
def test_bad_num_classes_is_rejected(num_classes):
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 1, got"):
        build_config(num_classes=num_classes)


# ---------------------------------------------------------------------------
# feature maps, custom config, classifier reset
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
def test_feature_maps_strides(mode, variant):
    model = _eval_model(mode, variant, 0.5)
    x = _randn(1, 3, 97, 97, seed=10)
    with torch.no_grad():
        maps = model.feature_maps(x)
        features = model.forward_features(x)
    assert len(maps) == 5
    assert [m.shape[-1] for m in maps] == [math.ceil(97 / s) for s in (2, 4, 8, 16, 32)]
    assert [m.shape[-2] for m in maps] == [49, 25, 13, 7, 4]
    assert torch.equal(maps[-1], features)


def test_explicit_config_is_used_as_is():
    config = build_config("SMALL", num_classes=7, multiplier=0.5, variant="seed")
    model = MobileNetV3("LARGE", num_classes=1000, multiplier=2.0, variant="paper", config=config)
    assert model.config is config
    assert len(model.block) == len(SEED_SMALL_BLOCKS)
    assert isinstance(model.block[0], MobileBlock) and model.block[0].config is config.blocks[0]
    assert model.out_conv2[3].out_channels == 7


def test_reset_classifier_changes_output_width():
    model = MobileNetV3("SMALL", multiplier=0.5).eval()
    model.reset_classifier(5)
    assert model.config.num_classes == 5
    with torch.no_grad():
        assert model(_randn(1, 3, 64, 64, seed=11)).shape == (1, 5)
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(0)


def test_building_blocks_behave():
    x = _randn(2, 8, 5, 5, seed=12)
    torch.testing.assert_close(HSwish()(x), F.hardswish(x))
    torch.testing.assert_close(HSigmoid()(x), F.hardsigmoid(x))
    assert SqueezeExcite(8, 8)(x).shape == x.shape
    assert SeedSqueezeBlock(8, 2)(x).shape == x.shape
