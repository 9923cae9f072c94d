"""What `mnv3_fast.finetune` and `mnv3_fast.predict` share: the process group, the
model from a name or checkpoint, and image loading.

Launched by `torchrun`, the entry points read RANK / WORLD_SIZE / LOCAL_RANK from
the environment; without it they run as one process.  NCCL is used when the
process has a CUDA device, gloo otherwise.  A process group that is already
initialised (by a caller that launched the ranks itself) is used and left open.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import warnings
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from .config import BlockConfig, NetworkConfig

# ------------------------------------------------------------------ the process group


@dataclasses.dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # whether close() should destroy the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj`, on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn) -> Any:
        """fn() run on rank 0, its result (or its exception) on every rank: an error on rank 0
        alone would otherwise leave the other ranks waiting for it forever."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as exc:  # re-raised below, on every rank
                error = exc
        result, error = self.broadcast((result, error))
        if error is not None:
            raise error
        return result

    def gather(self, obj: Any) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_sum(self, values: list) -> list:
        """Element-wise sum of `values` (numbers) over the ranks, as floats."""
        if not self.distributed:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str = "auto") -> DistEnv:
    """The process group for this process (see the module docstring). `device`: "auto" (the
    local rank's GPU when CUDA is available, else the CPU), "cpu" or "cuda"."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available to this process")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank, owns = int(os.environ.get("LOCAL_RANK", rank)), False
    else:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        local_rank, owns = int(os.environ.get("LOCAL_RANK", 0)), world > 1
    dev = torch.device("cpu")
    if use_cuda:
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    if owns:
        # device_id binds NCCL to this rank's GPU up front (barriers then know the device).
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    elif dist.is_initialized() and use_cuda != (dist.get_backend() == "nccl"):
        raise RuntimeError(f"the process group's backend {dist.get_backend()!r} does not fit the device {dev}")
    return DistEnv(rank, world, local_rank, dev, owns)


def run(fn, args) -> Any:
    """fn(args, env) in this process's group (`init_distributed(args.device)`), closed afterwards."""
    env = init_distributed(args.device)
    try:
        return fn(args, env)
    finally:
        env.close()


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def shard(items: list, rank: int, world_size: int) -> list:
    """This rank's share of `items`: every world_size-th one, from `rank`.  Unlike
    DistributedSampler nothing is padded, so across the ranks every item appears
    exactly once (ranks differ by at most one item)."""
    return items[rank::world_size]


# ------------------------------------------------------------------ models


def config_to_dict(config: NetworkConfig) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(d: dict) -> NetworkConfig:
    d = dict(d)
    d["blocks"] = tuple(BlockConfig(**b) for b in d["blocks"])
    return NetworkConfig(**d)


CHECKPOINT_FORMAT = "mnv3_fast.finetune/1"

# Model names that are built by a library (random weights unless pretrained=True),
# then converted: (prefix the name starts with, library).
MODEL_LIBRARIES = (("mobilenet_v3_", "torchvision"), ("mobilenetv3_", "timm"), ("timm/mobilenetv3_", "timm"))


def _library_model(name: str, library: str, pretrained: bool, width_mult: Optional[float]) -> nn.Module:
    try:
        if library == "torchvision":
            kwargs = {} if width_mult is None else {"width_mult": width_mult}
            return torchvision_module().models.get_model(name, weights="DEFAULT" if pretrained else None, **kwargs)
        import timm

        if width_mult is not None:
            raise ValueError(f"--width-mult applies to torchvision names; timm's {name!r} has its width in the name")
        return timm.create_model(name.removeprefix("timm/"), pretrained=pretrained)
    except (ImportError, ValueError, RuntimeError, OSError) as exc:
        what = "download its pretrained weights" if pretrained else "build it"
        raise ValueError(f"--model {name!r} ({library}): could not {what}: {exc}") from exc


def _unwrap_checkpoint(obj: Any, path: str) -> dict:
    """The state_dict inside a checkpoint file: raw, or under a "state_dict" / "model" key."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise ValueError(f"{path}: expected a state_dict (a dict of tensors, possibly under 'state_dict' or 'model'), "
                     f"got {type(obj).__name__}" + (f" with keys {list(obj)[:5]}" if isinstance(obj, dict) else ""))


def load_model(spec: str, *, width_mult: Optional[float] = None, pretrained: bool = False,
               reference: bool = False) -> tuple[nn.Module, Optional[list]]:
    """(model, class names or None) from `spec`: a checkpoint file (ours from finetune, or a
    torchvision / timm / seed / mnv3_fast state_dict) or a torchvision / timm model name.

    Returns a `mnv3_fast.MobileNetV3` (or, with reference=True, the eager
    `mnv3_fast.reference.MobileNetV3` with the same weights) in eval mode on the CPU."""
    from . import convert, from_pretrained_state_dict, reference as ref
    from .model import MobileNetV3

    if os.path.isfile(spec):
        try:
            obj = torch.load(spec, map_location="cpu", weights_only=True)
        except Exception as exc:  # a file that is no checkpoint fails anywhere in the unpickler (KeyError, ...)
            raise ValueError(f"--model {spec}: not a checkpoint torch.load can read with weights_only=True "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
            cls = ref.MobileNetV3 if reference else MobileNetV3
            model = cls(config=config_from_dict(obj["config"]))
            model.load_state_dict(obj["model"])
            return model.eval(), obj.get("classes")
        try:
            model = from_pretrained_state_dict(_unwrap_checkpoint(obj, spec))
        except ValueError as exc:
            raise ValueError(f"--model {spec}: not a MobileNetV3 checkpoint: {exc}") from None
    else:
        library = next((lib for prefix, lib in MODEL_LIBRARIES if spec.startswith(prefix)), None)
        if library is None:
            names = ", ".join(f"{p}* ({lib})" for p, lib in MODEL_LIBRARIES)
            raise ValueError(f"--model {spec!r}: no such file, and not a model name; expected a checkpoint path or "
                             f"a name starting with one of: {names} (e.g. mobilenet_v3_large, mobilenetv3_small_100)")
        model = convert(_library_model(spec, library, pretrained, width_mult))
    if reference:
        ref_model = ref.MobileNetV3(config=model.config)
        ref_model.load_state_dict(model.state_dict())
        model = ref_model
    return model.eval(), None


def set_dropout(model: nn.Module, p: float) -> None:
    """Sets every dropout's probability to `p` (and the config's, so checkpoints record it)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"--dropout must be in [0, 1], got {p}")
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
    model.config = dataclasses.replace(model.config, dropout_rate=p)


# ------------------------------------------------------------------ images

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
# ImageNet statistics: what torchvision's and timm's MobileNetV3 weights were trained with.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RESIZE_RATIO = 0.875  # eval: resize to size / 0.875, then center-crop size (256 -> 224)


def is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def open_rgb(path: str):
    """(PIL image in RGB, None), or (None, reason) for a file PIL cannot read; warns then."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB"), None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"skipping {path}: not a readable image ({reason})", stacklevel=2)
        return None, reason


class ImageFiles(Dataset):
    """Image i of `paths`, transformed: (i, tensor, None), or (i, None, reason) for a file that
    cannot be read (skipped with a warning)."""

    def __init__(self, paths: list, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i: int):
        image, error = open_rgb(self.paths[i])
        return i, (None if image is None else self.transform(image)), error


def collate_readable(batch):
    """ImageFiles items -> (indices of the readable images, their stacked tensors or None,
    [(index, reason)] of the others)."""
    ok = [(i, x) for i, x, _ in batch if x is not None]
    failed = [(i, e) for i, x, e in batch if x is None]
    images = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], images, failed


def torchvision_module():
    """torchvision, or an ImportError that says how to get it."""
    try:
        import torchvision
    except ImportError as exc:
        raise ImportError("mnv3_fast.finetune and mnv3_fast.predict need torchvision (and pillow): "
                          "pip install 'mnv3_fast[dist]'") from exc
    return torchvision


def eval_transform(size: int):
    t = torchvision_module().transforms
    return t.Compose([t.Resize(round(size / RESIZE_RATIO)), t.CenterCrop(size), t.ToTensor(), t.Normalize(MEAN, STD)])


def train_transform(size: int):
    t = torchvision_module().transforms
    return t.Compose([t.RandomResizedCrop(size), t.RandomHorizontalFlip(), t.ToTensor(), t.Normalize(MEAN, STD)])


def warn_ignored(paths: list, where: str) -> None:
    """One warning for the files under `where` that were left out because they are not images."""
    if paths:
        shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
        warnings.warn(f"{where}: skipping {len(paths)} file(s) without an image extension "
                      f"({'/'.join(IMAGE_EXTENSIONS)}): {shown}", stacklevel=2)
