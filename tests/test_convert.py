"""Tests for weight import: `mnv3_fast.convert(module)` and `mnv3_fast.from_pretrained_state_dict(sd)`.

Every source gets random BN statistics, BN affine parameters and biases (SE
biases included) before it is compared, so that a wrong mapping (a swapped
BN, a dropped bias, a wrong eps) cannot pass by accident.  Outputs are fp32
CPU logits compared with a relative tolerance: max |fast - source| over
max |source|.
"""
from __future__ import annotations

import copy
import math
import re
from collections import OrderedDict

import pytest
import timm
import torch
import torchvision
from conftest import EAGER_ERROR_FACTOR, randn
from torch import nn

import mnv3_fast
from mnv3_fast import reference
from mnv3_fast.testing import calibrate_bn_

REL_TOL = 1e-4
INPUT_SHAPE = (2, 3, 81, 97)  # odd, non-square: exercises padding and strides

TIMM_NAMES = (
    "mobilenetv3_large_100",
    "mobilenetv3_large_075",
    "mobilenetv3_small_050",
    "mobilenetv3_small_075",
    "mobilenetv3_small_100",
)


# ---------------------------------------------------------------- sources


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Calibrated-then-perturbed BN statistics (mnv3_fast.testing.calibrate_bn_), and Linear weights
    at 1/sqrt(fan_in) (torchvision's N(0, 0.01) init makes tiny logits); eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(m.in_features))
    return calibrate_bn_(model, seed=seed)


def reference_model(variant: str, mode: str, multiplier: float = 1.0) -> reference.MobileNetV3:
    torch.manual_seed(0)
    return randomize_(reference.MobileNetV3(mode, multiplier=multiplier, variant=variant))


def torchvision_model(arch: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    builder = {"large": torchvision.models.mobilenet_v3_large, "small": torchvision.models.mobilenet_v3_small}[arch]
    return randomize_(builder(**kwargs))


def timm_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomize_(timm.create_model(name, pretrained=False))


# Named sources for the state_dict tests (built lazily: each test builds only its own).
CHECKPOINT_SOURCES = {
    "torchvision_large": lambda: torchvision_model("large"),
    "torchvision_small": lambda: torchvision_model("small"),
    "torchvision_large_x0.75": lambda: torchvision_model("large", width_mult=0.75),
    "timm_large_100": lambda: timm_model("mobilenetv3_large_100"),
    "timm_small_075": lambda: timm_model("mobilenetv3_small_075"),
    "paper_large": lambda: reference_model("paper", "LARGE"),
    "paper_small_x0.75": lambda: reference_model("paper", "SMALL", 0.75),
    "seed_large": lambda: reference_model("seed", "LARGE"),
    "seed_small": lambda: reference_model("seed", "SMALL"),
}


def with_dataparallel_prefix(state_dict: dict) -> OrderedDict:
    return OrderedDict(("module." + key, value) for key, value in state_dict.items())


# ---------------------------------------------------------------- assertions


def assert_same_logits(fast: nn.Module, source: nn.Module, seed: int = 1) -> None:
    """The converted model computes the source's function: exactly in float64, and in float32 as close
    to it as the source's own float32 run is (calibrated BN statistics make the network amplify
    rounding, so eager float32 itself can be ~1e-4 off)."""
    assert isinstance(fast, mnv3_fast.MobileNetV3)
    assert not fast.training, "the converted model must be in eval mode"
    x = randn(*INPUT_SHAPE, seed=seed)
    with torch.no_grad():
        expected = copy.deepcopy(source).double()(x.double())
        out64 = copy.deepcopy(fast).double()(x.double())
        out, eager = fast(x), source(x)
    assert out.shape == expected.shape
    assert torch.isfinite(expected).all()
    assert not torch.allclose(expected[0], expected[1]), "degenerate source: logits do not depend on the input"

    def rel(a):
        return ((a.double() - expected).abs().max() / expected.abs().max()).item()

    assert rel(out64) <= 1e-9, f"float64 relative error {rel(out64):.3g}"
    tolerance = max(REL_TOL, EAGER_ERROR_FACTOR * rel(eager))
    assert rel(out) <= tolerance, f"relative error {rel(out):.3g} > {tolerance:.3g}"


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).contiguous().view(torch.uint8)


def snapshot(state_dict: dict) -> OrderedDict:
    return OrderedDict((key, value.detach().clone()) for key, value in state_dict.items())


def assert_bit_identical(state_dict: dict, before: OrderedDict) -> None:
    assert list(state_dict) == list(before), "the source's keys changed"
    for key, value in state_dict.items():
        assert value.dtype == before[key].dtype and value.shape == before[key].shape, key
        assert torch.equal(bits(value), bits(before[key])), f"{key} was modified"


def storages(tensors) -> set:
    return {t.untyped_storage().data_ptr() for t in tensors if t.numel() > 0}


def assert_independent_of(fast: nn.Module, source_state: dict) -> None:
    """No shared storage, and in-place writes to the converted model leave the source alone."""
    fast_tensors = list(fast.parameters()) + list(fast.buffers())
    assert not storages(fast_tensors) & storages(source_state.values()), "the converted model shares storage with the source"
    before = snapshot(source_state)
    with torch.no_grad():
        for t in fast_tensors:
            t.add_(1)
    assert_bit_identical(source_state, before)


# ---------------------------------------------------------------- convert(module)


def kwargs_id(kwargs: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in kwargs.items()) or "default"


@pytest.mark.parametrize("multiplier", [1.0, 0.75])
@pytest.mark.parametrize("mode", ["LARGE", "SMALL"])
@pytest.mark.parametrize("variant", ["paper", "seed"])
def test_convert_reference_model(variant, mode, multiplier):
    source = reference_model(variant, mode, multiplier)
    fast = mnv3_fast.convert(source)
    assert fast.config == source.config
    assert_same_logits(fast, source)


@pytest.mark.parametrize(
    "arch, kwargs",
    [
        ("large", {}),
        ("small", {}),
        ("large", {"width_mult": 0.75}),
        ("small", {"width_mult": 0.75}),
        ("large", {"reduced_tail": True}),
        ("small", {"reduced_tail": True}),
        ("large", {"dilated": True}),
        ("small", {"dilated": True}),
        ("large", {"width_mult": 0.75, "reduced_tail": True, "dilated": True}),
    ],
    ids=lambda v: kwargs_id(v) if isinstance(v, dict) else v,
)
def test_convert_torchvision(arch, kwargs):
    source = torchvision_model(arch, **kwargs)
    fast = mnv3_fast.convert(source)
    assert fast.config.bn_eps == 1e-3 and fast.config.bn_momentum == 0.01
    if kwargs.get("dilated"):
        assert any(b.dilation == 2 for b in fast.config.blocks)
    assert_same_logits(fast, source)


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_convert_timm(name):
    source = timm_model(name)
    fast = mnv3_fast.convert(source)
    assert fast.config.bn_eps == 1e-5
    assert_same_logits(fast, source)


def test_timm_scaling_is_not_torchvision_width_mult():
    """timm scales block outputs and expands from the scaled input: large_075's 2nd block expands 16 -> 64;
    torchvision x0.75 scales the expansion itself: 64 * 0.75 = 48."""
    assert mnv3_fast.convert(timm_model("mobilenetv3_large_075")).config.blocks[1].expand_channels == 64
    assert mnv3_fast.convert(torchvision_model("large", width_mult=0.75)).config.blocks[1].expand_channels == 48


@pytest.mark.parametrize("name", ["tf_mobilenetv3_small_100", "tf_mobilenetv3_large_100"])
def test_convert_refuses_tf_same_padding_variants(name):
    source = timm.create_model(name, pretrained=False).eval()
    with pytest.raises(ValueError, match=r"(?s)(?=.*same)(?=.*tf_)"):
        mnv3_fast.convert(source)


@pytest.mark.parametrize(
    "make_module",
    [
        lambda: torchvision.models.resnet18(),
        lambda: nn.Linear(4, 4),
        # Has `features` and `classifier` and a 'features.0.0.weight' key, yet is no MobileNetV3.
        lambda: torchvision.models.mobilenet_v2(),
    ],
    ids=["resnet18", "linear", "mobilenet_v2"],
)
def test_convert_rejects_unrelated_module(make_module):
    with pytest.raises(TypeError):
        mnv3_fast.convert(make_module())


@pytest.mark.parametrize("arch", ["large", "small"])
def test_converted_torchvision_feature_maps(arch):
    """5 maps at strides 2..32; each equals the last torchvision `features` output at that resolution."""
    source = torchvision_model(arch)
    fast = mnv3_fast.convert(source)
    x = randn(1, 3, 64, 64, seed=2)
    with torch.no_grad():
        maps = fast.feature_maps(x)
        expected_by_size = {}
        y = x
        for layer in source.features:
            y = layer(y)
            expected_by_size[y.shape[-1]] = y  # later layers at the same resolution win
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 4, 2]
    for m in maps:
        expected = expected_by_size[m.shape[-1]]
        assert m.shape == expected.shape
        rel_err = ((m - expected).abs().max() / expected.abs().max()).item()
        assert rel_err <= 10 * REL_TOL, f"map {tuple(m.shape)}: relative error {rel_err:.3g}"  # (two fp32 runs)


# ---------------------------------------------------------------- convert: the source is left alone


CONVERT_SOURCES = {
    "paper": lambda: reference_model("paper", "SMALL"),
    "seed": lambda: reference_model("seed", "SMALL"),
    "torchvision": lambda: torchvision_model("small"),
    "timm": lambda: timm_model("mobilenetv3_small_100"),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", CONVERT_SOURCES)
def test_convert_does_not_mutate_source(kind, training):
    source = CONVERT_SOURCES[kind]().train(training)
    modes_before = [m.training for m in source.modules()]
    state_before = snapshot(source.state_dict())

    fast = mnv3_fast.convert(source)

    assert [m.training for m in source.modules()] == modes_before
    assert_bit_identical(source.state_dict(), state_before)
    assert_independent_of(fast, source.state_dict())


# ---------------------------------------------------------------- from_pretrained_state_dict


@pytest.mark.parametrize("name", CHECKPOINT_SOURCES)
def test_from_pretrained_state_dict(name):
    source = CHECKPOINT_SOURCES[name]()
    fast = mnv3_fast.from_pretrained_state_dict(source.state_dict())
    if name.startswith("timm"):
        assert fast.config.bn_eps == 1e-5
    assert_same_logits(fast, source)


@pytest.mark.parametrize("name", ["seed_large", "torchvision_small"])
def test_from_pretrained_state_dict_with_dataparallel_prefix(name):
    source = CHECKPOINT_SOURCES[name]()
    fast = mnv3_fast.from_pretrained_state_dict(with_dataparallel_prefix(source.state_dict()))
    assert_same_logits(fast, source)


@pytest.mark.parametrize("prefixed", [False, True], ids=["plain", "dataparallel"])
@pytest.mark.parametrize("name", ["torchvision_small", "timm_small_075", "seed_small"])
def test_from_pretrained_state_dict_does_not_mutate_checkpoint(name, prefixed):
    state_dict = CHECKPOINT_SOURCES[name]().state_dict()
    if prefixed:
        state_dict = with_dataparallel_prefix(state_dict)
    before = snapshot(state_dict)

    fast = mnv3_fast.from_pretrained_state_dict(state_dict)

    assert_bit_identical(state_dict, before)
    assert_independent_of(fast, state_dict)


# ---------------------------------------------------------------- from_pretrained_state_dict: errors


@pytest.mark.parametrize(
    "state_dict, first_key",
    [
        ({"foo.weight": randn(3)}, "foo.weight"),
        ({"backbone.conv1.weight": randn(8, 3, 3, 3), "fc.weight": randn(10, 8)}, "backbone.conv1.weight"),
    ],
    ids=["one_key", "two_keys"],
)
def test_unrecognised_layout_names_first_key(state_dict, first_key):
    with pytest.raises(ValueError, match=re.escape(first_key)):
        mnv3_fast.from_pretrained_state_dict(state_dict)


@pytest.mark.parametrize("not_a_checkpoint", [{}, None, [("init_conv.0.weight", torch.ones(1))]], ids=["empty", "none", "list"])
def test_rejects_non_checkpoint(not_a_checkpoint):
    with pytest.raises(ValueError):
        mnv3_fast.from_pretrained_state_dict(not_a_checkpoint)


@pytest.mark.parametrize(
    "extra_key",
    [
        "fc.weight",  # outside every torchvision prefix
        "features.4.block.1.1.extra_stat",  # inside a BN's prefix: must still be named as the checkpoint spells it
    ],
)
def test_torchvision_checkpoint_with_extra_key_names_it(extra_key):
    state_dict = OrderedDict(torchvision_model("large").state_dict())
    state_dict[extra_key] = randn(72)
    with pytest.raises(ValueError, match=re.escape(extra_key)):
        mnv3_fast.from_pretrained_state_dict(state_dict)


@pytest.mark.parametrize(
    "name, key",
    [
        ("torchvision_large", "features.4.block.1.1.running_var"),
        ("torchvision_large", "features.4.block.2.fc2.bias"),
        ("timm_small_075", "blocks.2.0.bn2.running_var"),
        ("paper_large", "block.3.depthwise_conv.1.running_var"),
        ("seed_small", "block.3.depth_conv.1.running_var"),
    ],
)
def test_wrong_shaped_tensor_names_its_key(name, key):
    """The error must name the key as it appears in the user's checkpoint."""
    state_dict = OrderedDict(CHECKPOINT_SOURCES[name]().state_dict())
    state_dict[key] = state_dict[key][:-1].clone()
    with pytest.raises(ValueError, match=re.escape(key)):
        mnv3_fast.from_pretrained_state_dict(state_dict)


@pytest.mark.parametrize(
    "name, key",
    [
        ("torchvision_large", "features.0.0.weight"),  # the first key: the layout is still recognised
        ("torchvision_large", "features.4.block.1.1.running_var"),
        ("timm_small_075", "conv_stem.weight"),
        ("timm_small_075", "blocks.2.0.bn2.running_var"),
        ("paper_large", "init_conv.0.weight"),
        ("paper_large", "block.3.depthwise_conv.1.running_var"),
        ("seed_small", "init_conv.0.weight"),
        ("seed_small", "block.3.depth_conv.1.running_var"),
    ],
)
@pytest.mark.parametrize("prefixed", [False, True], ids=["plain", "dataparallel"])
def test_missing_key_is_named_as_the_checkpoint_spells_it(name, key, prefixed):
    """Issue 14: a missing first key used to make the layout 'unrecognised'."""
    state_dict = OrderedDict(CHECKPOINT_SOURCES[name]().state_dict())
    del state_dict[key]
    if prefixed:
        state_dict, key = with_dataparallel_prefix(state_dict), "module." + key
    with pytest.raises(ValueError, match=f"checkpoint: the checkpoint has no {re.escape(repr(key))}"):
        mnv3_fast.from_pretrained_state_dict(state_dict)


@pytest.mark.parametrize("mode", ["large", "small"])
def test_dilated_torchvision_state_dict(mode):
    """torchvision's dilated=True has the same keys and shapes: only the argument tells them apart."""
    source = randomize_(getattr(torchvision.models, f"mobilenet_v3_{mode}")(dilated=True))
    x = randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = source(x)
        plain = mnv3_fast.from_pretrained_state_dict(source.state_dict())
        assert (plain(x) - expected).abs().max() > 1e-3 * expected.abs().max()  # (loads, but computes another net)
        dilated = mnv3_fast.from_pretrained_state_dict(source.state_dict(), dilated=True)
        torch.testing.assert_close(dilated(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
        assert dilated.config == mnv3_fast.convert(source).config
