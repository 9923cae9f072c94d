"""Weight import: torchvision, timm, the seed implementation and our reference.

Two entry points:

* `convert(module)` reads the network's layout (channels, kernel, stride,
  dilation, SE width, activation, BN eps/momentum) off the module's actual
  layers, so any MobileNetV3-shaped network converts: torchvision at any
  `width_mult` (also `reduced_tail` and `dilated`), timm's `mobilenetv3_*`,
  and `mnv3_fast.reference.MobileNetV3`.
* `from_pretrained_state_dict(state_dict)` takes a raw checkpoint.  Channel
  widths and kernel sizes are read off the tensor shapes; what a state_dict
  cannot hold (strides, activations, BN eps) comes from the standard Large or
  Small table, chosen by the number of blocks.

Both return a `mnv3_fast.MobileNetV3` in eval mode whose outputs equal the
source's.  The source is never modified.  Every source layout is first mapped
onto our own keys ("paper" or "seed" variant) by `_map_*`, which names the
first key that does not fit when a checkpoint is not what it claims to be.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import replace

import torch
from torch import nn

from .config import BlockConfig, NetworkConfig, PAPER_LARGE_BLOCKS, PAPER_SMALL_BLOCKS, build_config
from .model import MobileNetV3
from .reference import model as ref

__all__ = ["convert", "from_pretrained_state_dict"]

# ------------------------------------------------------------------ helpers


def _activation_of(module: nn.Module | None) -> str:
    """Names an activation module by what it computes, so any ReLU / hard-swish class is recognised."""
    if module is None or isinstance(module, nn.Identity):
        return "none"
    probe = torch.linspace(-5, 5, 41)
    with torch.no_grad():
        out = module(probe.clone())
    for name, fn in (("relu", torch.relu), ("hswish", nn.functional.hardswish), ("none", lambda t: t)):
        if torch.allclose(out, fn(probe), atol=1e-6):
            return name
    raise ValueError(f"unsupported activation {type(module).__name__}: only ReLU and hard-swish have fused kernels")


def _check_hard_sigmoid(module: nn.Module, where: str) -> None:
    probe = torch.linspace(-5, 5, 41)
    with torch.no_grad():
        if not torch.allclose(module(probe.clone()), nn.functional.hardsigmoid(probe), atol=1e-6):
            raise ValueError(f"{where}: the SE gate {type(module).__name__} is not a hard-sigmoid")


def _check_conv(conv: nn.Module, where: str) -> None:
    if type(conv) is not nn.Conv2d or isinstance(conv.padding, str):
        raise ValueError(
            f"{where}: {type(conv).__name__} with padding {getattr(conv, 'padding', '?')!r} is not supported; "
            "only symmetric-padding nn.Conv2d (the tf_ 'same'-padding variants cannot be converted)"
        )
    k, d = conv.kernel_size[0], conv.dilation[0]
    if conv.padding[0] != (k - 1) // 2 * d or conv.padding[0] != conv.padding[1]:
        raise ValueError(f"{where}: expected padding {(k - 1) // 2 * d} for a {k}x{k} conv, got {conv.padding}")


def _bn_settings(bns: list) -> tuple[float, float]:
    settings = {(bn.eps, bn.momentum) for bn in bns}
    if len(settings) != 1:
        raise ValueError(f"every BatchNorm must share eps and momentum to convert, found {sorted(settings)}")
    return settings.pop()


def _linear_as_conv(t: torch.Tensor) -> torch.Tensor:
    return t[:, :, None, None] if t.dim() == 2 else t


def _build(config: NetworkConfig, state_dict: dict, source: str, mapping: "_KeyMap | None" = None) -> MobileNetV3:
    """The fast model with `state_dict` (already in our keys) loaded; errors name the
    source's own key (`mapping` names ours as the source does)."""
    name_of = mapping.source_name if mapping is not None else (lambda key: key)
    model = MobileNetV3(config=config)
    expected = model.state_dict()
    for key, value in state_dict.items():
        name = name_of(key)
        if key not in expected:
            raise ValueError(f"{source}: key {name!r} has no place in the converted model")
        if expected[key].shape != value.shape:
            raise ValueError(
                f"{source}: key {name!r} has shape {list(value.shape)}, the converted model expects {list(expected[key].shape)}"
            )
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise ValueError(f"{source}: the checkpoint has no {name_of(missing[0])!r} ({len(missing)} missing)")
    model.load_state_dict(state_dict)  # copies: the source's tensors are never shared or modified
    return model.eval()


class _KeyMap:
    """Builds our state_dict from a source's, remembering which source keys were used."""

    def __init__(self, source: dict):
        self.source = source
        self.out: OrderedDict = OrderedDict()
        self.origin: dict = {}  # our key -> the source's key, for error messages
        self.used: set = set()
        self.prefixes: list = []  # (our prefix, the source's prefix), to name keys the source lacks

    def source_name(self, key: str) -> str:
        """The source's name for one of our keys, present in the source or not."""
        if key in self.origin:
            return self.origin[key]
        for dst, src in self.prefixes:
            if key.startswith(dst):
                return src + key[len(dst):]
        return key

    def copy(self, dst_prefix: str, src_prefix: str, linear_to_conv: bool = False) -> None:
        self.prefixes.append((dst_prefix, src_prefix))
        found = False
        for key, value in self.source.items():
            if key.startswith(src_prefix):
                found = True
                self.used.add(key)
                name = key[len(src_prefix):]
                self.out[dst_prefix + name] = _linear_as_conv(value) if linear_to_conv and name == "weight" else value
                self.origin[dst_prefix + name] = key
        if not found:
            raise ValueError(f"expected keys starting with {src_prefix!r}, found none")

    def check_all_used(self, source: str) -> "_KeyMap":
        """Every source tensor must land somewhere: an extra key means the checkpoint is not what it seems."""
        for key in self.source:
            if key not in self.used:
                raise ValueError(f"{source}: key {key!r} has no place in the converted model")
        return self


# ------------------------------------------------------------------ torchvision


def _tv_sublayers(sd: dict, i: int) -> list[int]:
    pattern = re.compile(rf"features\.{i}\.block\.(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pattern.match(k))})


def _map_torchvision(sd: dict, blocks: tuple) -> _KeyMap:
    m = _KeyMap(sd)
    m.copy("init_conv.0.", "features.0.0.")
    m.copy("init_conv.1.", "features.0.1.")
    for b, cfg in enumerate(blocks):
        i = b + 1
        roles = (["expand_conv"] if cfg.has_expand else []) + ["depthwise_conv"] + (["squeeze_excite"] if cfg.has_se else []) + ["project_conv"]
        subs = _tv_sublayers(sd, i)
        if len(subs) != len(roles):
            raise ValueError(f"features.{i}: expected {len(roles)} sub-layers ({', '.join(roles)}), found {len(subs)}")
        for j, role in zip(subs, roles):
            src = f"features.{i}.block.{j}."
            if role == "squeeze_excite":
                m.copy(f"block.{b}.squeeze_excite.reduce.", src + "fc1.")
                m.copy(f"block.{b}.squeeze_excite.expand.", src + "fc2.")
            else:
                m.copy(f"block.{b}.{role}.0.", src + "0.")
                m.copy(f"block.{b}.{role}.1.", src + "1.")
    last = len(blocks) + 1
    m.copy("out_conv1.0.", f"features.{last}.0.")
    m.copy("out_conv1.1.", f"features.{last}.1.")
    m.copy("out_conv2.0.", "classifier.0.", linear_to_conv=True)
    m.copy("out_conv2.3.", "classifier.3.", linear_to_conv=True)
    return m


def _torchvision_config(model) -> NetworkConfig:
    feats = model.features
    blocks, bns = [], [feats[0][1], feats[-1][1]]
    for i, inv in enumerate(feats[1:-1], start=1):
        layers = list(inv.block)
        convs = [l for l in layers if not hasattr(l, "fc1")]
        se = next((l for l in layers if hasattr(l, "fc1")), None)
        dw_index = next(n for n, l in enumerate(convs) if l[0].groups > 1)
        dw = convs[dw_index]
        expand = convs[0] if dw_index == 1 else None
        project = convs[-1]
        for layer in convs:
            _check_conv(layer[0], f"features.{i}")
            bns.append(layer[1])
        if se is not None:
            _check_hard_sigmoid(se.scale_activation, f"features.{i}")
        blocks.append(BlockConfig(
            in_channels=(expand or dw)[0].in_channels, kernel_size=dw[0].kernel_size[0],
            expand_channels=dw[0].out_channels, out_channels=project[0].out_channels,
            se_channels=se.fc1.out_channels if se is not None else 0,
            activation=_activation_of(dw[2]), stride=dw[0].stride[0], dilation=dw[0].dilation[0],
        ))
    _check_conv(feats[0][0], "features.0")
    eps, momentum = _bn_settings(bns)
    head, classifier = model.classifier[0], model.classifier[3]
    return NetworkConfig(
        variant="paper", stem_channels=feats[0][0].out_channels, blocks=tuple(blocks),
        last_channels=feats[-1][0].out_channels, head_channels=head.out_features,
        num_classes=classifier.out_features, dropout_rate=model.classifier[2].p, bn_eps=eps, bn_momentum=momentum,
    )


# ------------------------------------------------------------------ timm


def _timm_block_prefixes(sd: dict) -> list[str]:
    pattern = re.compile(r"blocks\.(\d+)\.(\d+)\.")
    found = sorted({(int(m.group(1)), int(m.group(2))) for k in sd if (m := pattern.match(k))})
    return [f"blocks.{s}.{b}." for s, b in found]


def _map_timm(sd: dict, blocks: tuple) -> _KeyMap:
    m = _KeyMap(sd)
    m.copy("init_conv.0.", "conv_stem.")
    m.copy("init_conv.1.", "bn1.")
    prefixes = _timm_block_prefixes(sd)
    if len(prefixes) != len(blocks) + 1:
        raise ValueError(f"expected {len(blocks)} blocks and a last conv stage under 'blocks.', found {len(prefixes)}")
    for b, (cfg, src) in enumerate(zip(blocks, prefixes)):
        dst = f"block.{b}."
        if cfg.has_expand:  # timm InvertedResidual: conv_pw/bn1, conv_dw/bn2, se, conv_pwl/bn3
            pairs = [("expand_conv", "conv_pw", "bn1"), ("depthwise_conv", "conv_dw", "bn2"), ("project_conv", "conv_pwl", "bn3")]
        else:  # timm DepthwiseSeparableConv: conv_dw/bn1, se, conv_pw/bn2
            pairs = [("depthwise_conv", "conv_dw", "bn1"), ("project_conv", "conv_pw", "bn2")]
        for role, conv, bn in pairs:
            m.copy(f"{dst}{role}.0.", f"{src}{conv}.")
            m.copy(f"{dst}{role}.1.", f"{src}{bn}.")
        if cfg.has_se:
            m.copy(f"{dst}squeeze_excite.reduce.", f"{src}se.conv_reduce.")
            m.copy(f"{dst}squeeze_excite.expand.", f"{src}se.conv_expand.")
    m.copy("out_conv1.0.", prefixes[-1] + "conv.")
    m.copy("out_conv1.1.", prefixes[-1] + "bn1.")
    m.copy("out_conv2.0.", "conv_head.")
    m.copy("out_conv2.3.", "classifier.", linear_to_conv=True)
    return m


def _timm_config(model) -> NetworkConfig:
    if not isinstance(getattr(model, "norm_head", nn.Identity()), nn.Identity):
        raise ValueError("timm models with a norm_head are not MobileNetV3-shaped; cannot convert")
    if getattr(model, "global_pool", None) is not None and getattr(model.global_pool, "pool_type", "avg") != "avg":
        raise ValueError(f"only average pooling is supported, got {model.global_pool.pool_type!r}")
    stages = list(model.blocks)
    blocks, bns = [], [model.bn1]
    for s, stage in enumerate(stages[:-1]):
        for b, blk in enumerate(stage):
            where = f"blocks.{s}.{b}"
            has_expand = hasattr(blk, "conv_pwl")
            dw, dw_bn = blk.conv_dw, (blk.bn2 if has_expand else blk.bn1)
            project = blk.conv_pwl if has_expand else blk.conv_pw
            for conv in ([blk.conv_pw] if has_expand else []) + [dw, project]:
                _check_conv(conv, where)
            bns += [blk.bn1, blk.bn2] + ([blk.bn3] if has_expand else [])
            se = blk.se if hasattr(blk.se, "conv_reduce") else None
            if se is not None:
                _check_hard_sigmoid(se.gate, where)
            cfg = BlockConfig(
                in_channels=(blk.conv_pw if has_expand else dw).in_channels, kernel_size=dw.kernel_size[0],
                expand_channels=dw.out_channels, out_channels=project.out_channels,
                se_channels=se.conv_reduce.out_channels if se is not None else 0,
                activation=_activation_of(dw_bn.act), stride=dw.stride[0], dilation=dw.dilation[0],
            )
            if bool(getattr(blk, "has_skip", cfg.use_residual)) != cfg.use_residual:
                raise ValueError(f"{where}: residual {blk.has_skip} differs from MobileNetV3's rule (stride 1 and in == out)")
            if _activation_of(getattr((blk.bn3 if has_expand else blk.bn2), "act", None)) != "none":
                raise ValueError(f"{where}: the projection has an activation; MobileNetV3's has none")
            blocks.append(cfg)
    last = stages[-1][0]
    _check_conv(model.conv_stem, "conv_stem")
    bns.append(last.bn1)
    eps, momentum = _bn_settings(bns)
    return NetworkConfig(
        variant="paper", stem_channels=model.conv_stem.out_channels, blocks=tuple(blocks),
        last_channels=last.conv.out_channels, head_channels=model.conv_head.out_channels,
        num_classes=model.classifier.out_features, dropout_rate=float(getattr(model, "drop_rate", 0.2)),
        bn_eps=eps, bn_momentum=momentum,
    )


# ------------------------------------------------------------------ state_dict form


# Each layout's keys, as patterns: a checkpoint's layout is the one whose patterns most of its keys
# match, so that a checkpoint with a key missing (even its first) is still recognised, and the
# error can name what is missing.
_LAYOUT_KEYS = {
    "torchvision": re.compile(r"features\.\d+\.(\d+|block)\.|classifier\.[03]\."),
    "timm": re.compile(r"(conv_stem|bn1|bn2|blocks|conv_head|classifier)\."),
    "seed": re.compile(r"(init_conv|out_conv[12])\.|block\.\d+\.(conv|depth_conv|squeeze_block|point_conv)\."),
    "paper": re.compile(r"(init_conv|out_conv[12])\.|block\.\d+\.(expand_conv|depthwise_conv|squeeze_excite|"
                        r"project_conv)\."),
}
# Keys only one layout has: they break ties (the seed's and the paper's share init_conv/out_conv).
_LAYOUT_MARKS = {"seed": re.compile(r"block\.\d+\.(conv|depth_conv|point_conv)\."),
                 "paper": re.compile(r"block\.\d+\.(depthwise_conv|project_conv)\.")}


def _detect_layout(sd: dict) -> str:
    keys = list(sd)
    votes = {name: sum(1 for k in keys if pattern.match(k)) for name, pattern in _LAYOUT_KEYS.items()}
    for name, mark in _LAYOUT_MARKS.items():
        if not any(mark.match(k) for k in keys):
            votes[name] = 0
    best = max(votes, key=votes.get)
    if votes[best] * 2 <= len(keys):  # (most keys must fit it)
        raise ValueError(f"unrecognised checkpoint layout: first key {keys[0] if keys else None!r} fits none of "
                         "torchvision, timm, the seed implementation or mnv3_fast")
    return best


def _preset_rows(n_blocks: int, source: str):
    if n_blocks == len(PAPER_LARGE_BLOCKS):
        return PAPER_LARGE_BLOCKS
    if n_blocks == len(PAPER_SMALL_BLOCKS):
        return PAPER_SMALL_BLOCKS
    raise ValueError(f"{source}: {n_blocks} blocks match neither MobileNetV3-Large (15) nor -Small (11)")


def _blocks_from_shapes(widths: list, source: str) -> tuple:
    """widths: per block (in, expand, out, kernel, se) read off tensor shapes; strides and
    activations come from the standard table of the same length."""
    rows = _preset_rows(len(widths), source)
    blocks = []
    for (in_ch, exp, out_ch, k, se), row in zip(widths, rows):
        act = "relu" if row[5] == "RE" else "hswish"
        blocks.append(BlockConfig(in_ch, k, exp, out_ch, se, act, row[6]))
    return tuple(blocks)


def _torchvision_config_from_sd(sd: dict) -> NetworkConfig:
    n_blocks = 0
    while f"features.{n_blocks + 1}.block.0.0.weight" in sd:
        n_blocks += 1
    widths = []
    for i in range(1, n_blocks + 1):
        convs = [sd[f"features.{i}.block.{j}.0.weight"] for j in _tv_sublayers(sd, i) if f"features.{i}.block.{j}.0.weight" in sd]
        dw = next(w for w in convs if w.shape[1] == 1 and w.shape[-1] > 1)
        se = next((sd[k].shape[0] for k in sd if re.match(rf"features\.{i}\.block\.\d+\.fc1\.weight$", k)), 0)
        in_channels = dw.shape[0] if convs[0] is dw else convs[0].shape[1]
        widths.append((in_channels, dw.shape[0], convs[-1].shape[0], dw.shape[-1], se))
    last = n_blocks + 1
    blocks = _blocks_from_shapes(widths, "torchvision checkpoint")
    return NetworkConfig("paper", sd["features.0.0.weight"].shape[0], blocks, sd[f"features.{last}.0.weight"].shape[0],
                         sd["classifier.0.weight"].shape[0], sd["classifier.3.weight"].shape[0], 0.2, 1e-3, 0.01)


def _timm_config_from_sd(sd: dict) -> NetworkConfig:
    prefixes = _timm_block_prefixes(sd)
    widths = []
    for p in prefixes[:-1]:
        dw = sd[p + "conv_dw.weight"]
        has_expand = p + "conv_pwl.weight" in sd
        first = sd[p + "conv_pw.weight"] if has_expand else dw
        project = sd[p + ("conv_pwl.weight" if has_expand else "conv_pw.weight")]
        se = sd[p + "se.conv_reduce.weight"].shape[0] if p + "se.conv_reduce.weight" in sd else 0
        widths.append((first.shape[1] if has_expand else dw.shape[0], dw.shape[0], project.shape[0], dw.shape[-1], se))
    blocks = _blocks_from_shapes(widths, "timm checkpoint")
    return NetworkConfig("paper", sd["conv_stem.weight"].shape[0], blocks, sd[prefixes[-1] + "conv.weight"].shape[0],
                         sd["conv_head.weight"].shape[0], sd["classifier.weight"].shape[0], 0.2, 1e-5, 0.1)


def _own_config_from_sd(sd: dict, variant: str) -> NetworkConfig:
    """Our own layouts (the reference's paper and seed variants): mode and multiplier from the shapes."""
    n_blocks = len({int(m.group(1)) for k in sd if (m := re.match(r"block\.(\d+)\.", k))})
    mode = "LARGE" if n_blocks == 15 else "SMALL" if n_blocks == 11 else None
    if mode is None:
        raise ValueError(f"{variant} checkpoint: {n_blocks} blocks match neither Large (15) nor Small (11)")
    num_classes = sd["out_conv2.3.weight"].shape[0]
    base = build_config(mode, num_classes, 1.0, variant=variant)
    # Read every width off the shapes, keeping the table's kernels, strides and activations.
    expand_key, dw_key, se_key, project_key = ref.MobileBlock.PART_NAMES[variant]
    se_fc1 = (ref.SeedSqueezeBlock if variant == "seed" else ref.SqueezeExcite).FC_NAMES[0]
    blocks = []
    for i, cfg in enumerate(base.blocks):
        dw = sd[f"block.{i}.{dw_key}.0.weight"]
        first = sd.get(f"block.{i}.{expand_key}.0.weight", dw)
        se = sd.get(f"block.{i}.{se_key}.{se_fc1}.weight")
        blocks.append(replace(cfg, in_channels=first.shape[1] if first is not dw else dw.shape[0],
                              expand_channels=dw.shape[0], kernel_size=dw.shape[-1],
                              out_channels=sd[f"block.{i}.{project_key}.0.weight"].shape[0],
                              se_channels=0 if se is None else se.shape[0]))
    last_se = sd.get(f"out_conv1.1.{ref.SeedSqueezeBlock.FC_NAMES[0]}.weight")
    return replace(base, stem_channels=sd["init_conv.0.weight"].shape[0], blocks=tuple(blocks),
                   last_channels=sd["out_conv1.0.weight"].shape[0], head_channels=sd["out_conv2.0.weight"].shape[0],
                   last_se_channels=0 if last_se is None else last_se.shape[0])


def _dilate_last_stage(config: NetworkConfig) -> NetworkConfig:
    """torchvision's `dilated=True`: the blocks from the last stride-2 one on run at stride 1 with
    dilation 2 (the output stride is 16 instead of 32)."""
    last = max(i for i, b in enumerate(config.blocks) if b.stride == 2)
    blocks = tuple(replace(b, stride=1, dilation=2) if i >= last else b for i, b in enumerate(config.blocks))
    return replace(config, blocks=blocks)


def from_pretrained_state_dict(state_dict: dict, dilated: bool = False) -> MobileNetV3:
    """A fast model (eval mode) from a raw checkpoint of torchvision, timm, the seed
    implementation (a DataParallel `module.` prefix is fine) or mnv3_fast itself.

    A state_dict holds no strides or dilations: they come from the standard table.
    `dilated=True` is for checkpoints of torchvision's `mobilenet_v3_*(dilated=True)`
    (a segmentation backbone), whose keys and shapes are identical to the undilated
    model's: it cannot be told apart, and loads wrong without it."""
    if not isinstance(state_dict, dict) or not state_dict:
        raise ValueError(f"expected a non-empty state_dict (a dict of tensors), got {type(state_dict).__name__}")
    # DataParallel saves every key under "module."; errors still name the key as the checkpoint has it.
    original = {(k[len("module."):] if k.startswith("module.") else k): k for k in state_dict}
    sd = OrderedDict((k, state_dict[original[k]]) for k in original)
    prefix = "module." if all(k.startswith("module.") for k in state_dict) else ""
    layout = _detect_layout(sd)
    source = f"{layout} checkpoint"
    try:
        if layout == "torchvision":
            config = _torchvision_config_from_sd(sd)
            mapping = _map_torchvision(sd, config.blocks)
        elif layout == "timm":
            config = _timm_config_from_sd(sd)
            mapping = _map_timm(sd, config.blocks)
        else:  # our own keys, unchanged
            config = _own_config_from_sd(sd, layout)
            mapping = _KeyMap(sd)
            mapping.copy("", "")
    except KeyError as exc:
        raise ValueError(f"{source}: the checkpoint has no {prefix + exc.args[0]!r}, which this layout needs") from None
    except (StopIteration, IndexError) as exc:
        raise ValueError(f"{source}: does not fit the expected layout ({exc!r})") from None
    for ours, theirs in mapping.origin.items():
        mapping.origin[ours] = original[theirs]
    mapping.prefixes = [(ours, prefix + theirs) for ours, theirs in mapping.prefixes]
    mapping.check_all_used(source)
    if dilated:
        config = _dilate_last_stage(config)
    return _build(config, mapping.out, source, mapping)


def convert(module: nn.Module) -> MobileNetV3:
    """A fast model with the same outputs as `module` (in eval mode), which is left untouched.

    Accepts `mnv3_fast.reference.MobileNetV3` (and the fast model itself),
    torchvision's `mobilenet_v3_large/small` (any width_mult, dilated,
    reduced_tail) and timm's `mobilenetv3_*` (not the tf_ 'same'-padding
    variants).  The layout is read off the module's layers, not its name.
    """
    if isinstance(module, ref.MobileNetV3):
        fast = MobileNetV3(config=module.config)
        fast.load_state_dict(module.state_dict())
        return _like_source(fast, module).eval()
    sd = module.state_dict()
    cls = type(module)
    kind = f"{cls.__module__}.{cls.__name__}"
    try:
        if _looks_like_torchvision(module):
            config = _torchvision_config(module)
            mapping = _map_torchvision(sd, config.blocks)
        elif hasattr(module, "conv_stem") and hasattr(module, "blocks") and hasattr(module, "conv_head"):
            config = _timm_config(module)
            mapping = _map_timm(sd, config.blocks)
        else:
            raise TypeError(f"convert: don't know how to read a MobileNetV3 layout off {kind}")
    except (AttributeError, IndexError, StopIteration) as exc:
        raise TypeError(f"convert: {kind} is not MobileNetV3-shaped ({exc})") from None
    mapping.check_all_used(cls.__name__)
    return _like_source(_build(config, mapping.out, cls.__name__, mapping), module)


def _like_source(fast: MobileNetV3, source: nn.Module) -> MobileNetV3:
    """The converted model on the source's device and in its dtype."""
    first = next(source.parameters(), None)
    return fast if first is None else fast.to(device=first.device, dtype=first.dtype)


def _looks_like_torchvision(module: nn.Module) -> bool:
    """torchvision's MobileNetV3: features = [stem, InvertedResidual(.block)..., last conv], 4-layer classifier."""
    features, classifier = getattr(module, "features", None), getattr(module, "classifier", None)
    return (isinstance(features, nn.Sequential) and isinstance(classifier, nn.Sequential) and len(classifier) == 4
            and len(features) > 2 and all(hasattr(f, "block") for f in features[1:-1]))
