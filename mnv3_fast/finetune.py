"""Fine-tune a MobileNetV3 on an ImageFolder, on one process or many (torchrun).

    torchrun --nproc-per-node 4 -m mnv3_fast.finetune DATA --model mobilenet_v3_large --output-dir runs/x
    python -m mnv3_fast.finetune DATA --model ckpt.pth --output-dir runs/x        # one process

DATA holds train/<class>/<image> and val/<class>/<image>.  The model runs as
`mnv3_fast.MobileNetV3` wrapped in DistributedDataParallel (NCCL on GPUs, gloo on
the CPU), channels_last, under autocast (bf16 or fp16), with a cosine learning
rate.  Rank 0 writes OUTPUT_DIR/last.pt at the end of every epoch (and every
--save-every steps); a rerun with the same OUTPUT_DIR resumes from it at the same
step, with the optimizer's and the fp16 grad scaler's state.

Reproducibility across world sizes: the training order is DistributedSampler's
permutation of (seed, epoch), and each image's random crop and flip are drawn
from a generator seeded by (seed, epoch, image index), so an image is augmented
the same way whichever rank loads it.  With --freeze-bn and --dropout 0, N ranks
at batch B take the same steps as one process at batch N*B (up to float
rounding).  With BatchNorm in train mode (the default) each rank normalises over
its own batch, as DDP does without SyncBatchNorm (--sync-bn, GPUs only), and DDP
broadcasts rank 0's running statistics at every forward.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ._distributed import (CHECKPOINT_FORMAT, DistEnv, ImageFiles, collate_readable, config_to_dict, eval_transform,
                           is_image_file, load_model, open_rgb, positive_int, run, set_dropout, shard,
                           torchvision_module, train_transform, warn_ignored)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mnv3_fast.finetune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", help="directory with train/<class>/<image> and val/<class>/<image>")
    p.add_argument("--model", required=True,
                   help="checkpoint path (torchvision, timm, seed, mnv3_fast or a finetune last.pt) or a "
                        "torchvision/timm name such as mobilenet_v3_large or mobilenetv3_small_100")
    p.add_argument("--pretrained", action="store_true", help="with a model name: download its published weights")
    p.add_argument("--width-mult", type=float, default=None, help="width multiplier for a torchvision name")
    p.add_argument("--output-dir", required=True, help="where last.pt and metrics.jsonl go; a rerun resumes from it")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUTPUT_DIR/last.pt exists")
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="stop after this many steps in all (the schedule still spans --epochs)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="per rank")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd")
    p.add_argument("--lr", type=float, default=0.01, help="peak learning rate (not scaled by the world size)")
    p.add_argument("--weight-decay", type=float, default=4e-5, help="on conv and linear weights, not on BN or biases")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=None, help="override the classifier's dropout probability")
    p.add_argument("--freeze-bn", action="store_true",
                   help="BatchNorm uses and keeps its running statistics (its scale and shift still train)")
    p.add_argument("--sync-bn", action="store_true", help="BatchNorm statistics over all ranks' batches (GPUs only)")
    p.add_argument("--amp", choices=["auto", *AMP_DTYPES], default="auto",
                   help="autocast dtype; auto: bf16 (fp16 on GPUs without bf16)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--workers", type=int, default=4, help="data-loading processes per rank")
    p.add_argument("--save-every", type=int, default=0, help="also checkpoint every this many steps (0: epoch ends)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    return p.parse_args(argv)


def _param_groups(model: nn.Module, weight_decay: float) -> list:
    """Weight decay on conv / linear weights only: decaying BN scales and biases only hurts."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


OPTIMIZERS = {
    "sgd": lambda groups, lr: torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True),
    "adamw": lambda groups, lr: torch.optim.AdamW(groups, lr=lr),
}


def lr_at(step: int, args, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to zero at the last step of the schedule."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps)
    return args.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ------------------------------------------------------------------ data


def _image_folder(root: str, what: str, warn: bool):
    """torchvision's ImageFolder over `root`, with a clear error when there is nothing to train on;
    `warn`: about the files left out (one rank says it for all)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{what} split: expected a directory {root}/<class>/<image>, found no {root}")
    ignored = []

    def keep(path: str) -> bool:
        if is_image_file(path):
            return True
        ignored.append(path)
        return False

    image_folder = torchvision_module().datasets.ImageFolder
    try:
        ds = image_folder(root, loader=lambda path: path, is_valid_file=keep, allow_empty=True)
    except FileNotFoundError as exc:  # no class folders at all
        raise FileNotFoundError(f"{what} split {root}: expected one sub-directory per class holding images; {exc}") \
            from None
    if warn:
        warn_ignored(ignored, root)
    if not ds.samples:
        raise FileNotFoundError(f"{what} split {root}: no images in its {len(ds.classes)} class folder(s) "
                                f"{ds.classes[:5]}; expected {root}/<class>/<image>.jpg (or .png, ...)")
    return ds


class SeededImages(Dataset):
    """ImageFolder samples, transformed under a generator seeded by (seed, epoch, index),
    so augmentation does not depend on which rank or worker loads an image (see the
    module docstring).  An unreadable image is replaced by the next readable one,
    so that every rank's batch keeps its size (a short batch would desynchronise
    the ranks' steps)."""

    def __init__(self, folder, transform, seed: int, epoch: int = 0):
        self.samples, self.transform, self.seed, self.epoch = folder.samples, transform, seed, epoch

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index: int):
        for i in range(len(self.samples)):
            path, target = self.samples[(index + i) % len(self.samples)]
            image, _ = open_rgb(path)
            if image is not None:
                break
        else:
            raise RuntimeError(f"none of the {len(self.samples)} training images could be read")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index) % 2**63)
            return self.transform(image), target


# ------------------------------------------------------------------ model


def _with_head(model, classes: list, model_classes: Optional[list], env: DistEnv):
    """Keeps the classifier when it already predicts `classes`, else gives it a new one."""
    same = model_classes == classes if model_classes is not None else model.num_classes == len(classes)
    if not same:
        if env.is_main:
            print(f"finetune: new classifier for {len(classes)} classes (the model had {model.num_classes})",
                  flush=True)
        model.reset_classifier(len(classes))
        # reset_classifier initialises the new 1x1 conv like a conv (kaiming, fan_out = the few classes), which
        # starts from logits of std ~10 whose first large gradients disturb pretrained features; torchvision's
        # Linear classifier starts from N(0, 0.01).
        head = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
        nn.init.normal_(head.weight, 0.0, 0.01)
        nn.init.zeros_(head.bias)
    return model


def _check_same_network(model, checkpoint: dict, path: str, spec: str) -> None:
    """A resumed checkpoint must hold the network --model builds (dropout aside)."""
    ours, theirs = config_to_dict(model.config), dict(checkpoint["config"])
    for key in ours:
        if key == "dropout_rate" or ours[key] == theirs.get(key):
            continue
        a, b = theirs.get(key), ours[key]
        if key == "blocks" and len(a) != len(b):
            a, b = f"{len(a)} blocks", f"{len(b)} blocks"
        elif key == "blocks":
            i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            a, b = f"block {i} {a[i]}", f"block {i} {b[i]}"
        raise ValueError(f"{path} holds another network than --model {spec}: {key} is {a} in the checkpoint, "
                         f"{b} in the model; resume with the same --model, or use another --output-dir")


def _set_bn_frozen(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


# ------------------------------------------------------------------ checkpoints


def _save(path: str, state: dict) -> None:
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-save leaves the previous checkpoint intact


def load_trained(path: str, reference: bool = False):
    """The model in a finetune checkpoint (eval mode): `mnv3_fast.MobileNetV3`, or with
    reference=True the eager `mnv3_fast.reference.MobileNetV3`; its class names are in
    `torch.load(path)["classes"]`."""
    return load_model(path, reference=reference)[0]


# ------------------------------------------------------------------ training


class TrainResult(NamedTuple):
    model: nn.Module  # the trained model (not the DDP wrapper)
    optimizer: torch.optim.Optimizer
    step: int
    metrics: list  # one dict per epoch (or part of one) run


def _amp_dtype(name: str, device: torch.device) -> Optional[torch.dtype]:
    if name == "auto":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if name == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device; on the CPU use --amp bf16 or --amp none")
    return AMP_DTYPES[name]


@torch.no_grad()
def evaluate(model: nn.Module, samples: list, args, env: DistEnv) -> tuple[float, int]:
    """(top-1 accuracy, images seen) over the (path, target) `samples`, each rank taking its
    `shard`; unreadable images are left out.  Runs the unwrapped model: DDP's forward would
    need every rank to run the same number of batches, and the shards may differ by one image."""
    model.eval()
    mine = shard(samples, env.rank, env.world_size)
    targets = torch.tensor([t for _, t in mine], dtype=torch.long)
    loader = DataLoader(ImageFiles([p for p, _ in mine], eval_transform(args.image_size)), batch_size=args.batch_size,
                        num_workers=args.workers if mine else 0, collate_fn=collate_readable,
                        pin_memory=env.device.type == "cuda")
    correct = seen = 0
    amp = _amp_dtype(args.amp, env.device)
    for indices, images, _ in loader:
        if images is None:
            continue
        images = images.to(env.device, non_blocking=True, memory_format=_memory_format(args))
        with torch.autocast(env.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(images)
        correct += (logits.argmax(1).cpu() == targets[indices]).sum().item()
        seen += len(indices)
    correct, seen = env.all_sum([correct, seen])
    return (correct / seen if seen else float("nan")), int(seen)


def _memory_format(args):
    return torch.channels_last if args.channels_last else torch.contiguous_format


def _progress(total: int, initial: int, desc: str, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional: no bar, the metrics lines still come
        return None
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


def train(args, env: DistEnv) -> TrainResult:
    amp = _amp_dtype(args.amp, env.device)
    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    train_folder = _image_folder(os.path.join(args.data, "train"), "train", env.is_main)
    val_folder = _image_folder(os.path.join(args.data, "val"), "val", env.is_main)
    if val_folder.classes != train_folder.classes:
        raise ValueError(f"the val split's classes {val_folder.classes[:5]} differ from the train split's "
                         f"{train_folder.classes[:5]}; both need the same class folders")
    classes = train_folder.classes

    model, model_classes = load_model(args.model, width_mult=args.width_mult, pretrained=args.pretrained)
    model = _with_head(model, classes, model_classes, env)
    if args.dropout is not None:
        set_dropout(model, args.dropout)

    os.makedirs(args.output_dir, exist_ok=True)
    ckpt_path = os.path.join(args.output_dir, "last.pt")
    checkpoint = None
    if not args.no_resume:
        # Rank 0 reads and sends it, so ranks on other hosts need no shared filesystem to resume.
        checkpoint = env.on_main(lambda: torch.load(ckpt_path, map_location="cpu", weights_only=True)
                                 if os.path.exists(ckpt_path) else None)
    if checkpoint is not None:
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{ckpt_path}: not a finetune checkpoint (format {checkpoint.get('format')!r}, "
                             f"expected {CHECKPOINT_FORMAT!r})")
        _check_same_network(model, checkpoint, ckpt_path, args.model)
        if checkpoint["classes"] != classes:
            raise ValueError(f"{ckpt_path} was trained on classes {checkpoint['classes'][:5]}..., the data has "
                             f"{classes[:5]}...; use another --output-dir")
        model.load_state_dict(checkpoint["model"])

    if args.sync_bn:
        if env.device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernel)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(env.device, memory_format=_memory_format(args))
    ddp = model
    if env.distributed:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[env.device] if env.device.type == "cuda" else None)

    optimizer = OPTIMIZERS[args.optimizer](_param_groups(model, args.weight_decay), args.lr)
    scaler = torch.amp.GradScaler(env.device.type, enabled=amp is torch.float16)
    step = 0
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint["scaler"] and scaler.is_enabled():  # (empty when saved without fp16)
            scaler.load_state_dict(checkpoint["scaler"])
        step = checkpoint["step"]
        if env.is_main:
            print(f"finetune: resuming from {ckpt_path} at step {step}", flush=True)

    train_set = SeededImages(train_folder, train_transform(args.image_size), args.seed)
    # Training pads the permutation to a multiple of the world size (a few images twice an
    # epoch), so that every rank takes the same number of steps.
    sampler = DistributedSampler(train_set, num_replicas=env.world_size, rank=env.rank, seed=args.seed)
    steps_per_epoch = len(sampler) // args.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"the train split has {len(train_set)} images: fewer than one batch of {args.batch_size} "
                         f"per rank on {env.world_size} rank(s); lower --batch-size")
    total_steps = args.epochs * steps_per_epoch
    stop = total_steps if args.max_steps is None else min(total_steps, args.max_steps)
    metrics_path = os.path.join(args.output_dir, "metrics.jsonl")
    metrics: list = []

    def checkpoint_state() -> dict:
        return {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": config_to_dict(model.config),
                "classes": classes, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "step": step, "epoch": step / steps_per_epoch, "args": vars(args)}

    while step < stop:
        epoch, first = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        train_set.epoch = epoch
        # A resumed epoch skips the batches it already took (the order is the same: same seed and epoch).
        indices = list(sampler)[first * args.batch_size: steps_per_epoch * args.batch_size]
        loader = DataLoader(train_set, batch_size=args.batch_size, sampler=indices, num_workers=args.workers,
                            drop_last=True, pin_memory=env.device.type == "cuda")
        model.train()
        if args.freeze_bn:
            _set_bn_frozen(model)
        bar = _progress(steps_per_epoch, first, f"epoch {epoch + 1}/{args.epochs}", env.is_main)
        loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
        seen, start, epoch_start = 0, step, time.perf_counter()
        for images, targets in loader:
            if step >= stop:
                break
            torch.manual_seed(args.seed + 7919 * step + env.rank)  # dropout masks: reproducible on resume
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, args, total_steps)
            images = images.to(env.device, non_blocking=True, memory_format=_memory_format(args))
            targets = targets.to(env.device, non_blocking=True)
            with torch.autocast(env.device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = ddp(images)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            loss_sum += loss.detach().double() * len(targets)
            seen += len(targets)
            if bar is not None:
                bar.update()
                if step % 10 == 0 or step == stop:  # .item() waits for the GPU: not every step
                    bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if args.save_every and step % args.save_every == 0 and step < stop and env.is_main:
                _save(ckpt_path, checkpoint_state())
        if bar is not None:
            bar.close()
        train_time = time.perf_counter() - epoch_start
        loss_total, seen_total = env.all_sum([loss_sum.item(), seen])
        top1, val_seen = evaluate(model, val_folder.samples, args, env)
        line = {"epoch": epoch + 1, "step": step, "steps": step - start, "loss": loss_total / max(1, seen_total),
                "val_top1": top1, "val_images": val_seen, "lr": optimizer.param_groups[0]["lr"],
                "images_per_s": seen_total / train_time, "partial_epoch": step % steps_per_epoch != 0}
        metrics.append(line)
        if env.is_main:
            print(f"epoch {epoch + 1}/{args.epochs} step {step}/{total_steps}: loss {line['loss']:.4f}, "
                  f"val top-1 {100 * top1:.2f}% ({val_seen} images), {line['images_per_s']:.1f} img/s "
                  f"on {env.world_size} rank(s)", flush=True)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(line) + "\n")
            _save(ckpt_path, checkpoint_state())
    env.barrier()  # the checkpoint is on disk before any rank returns
    return TrainResult(model, optimizer, step, metrics)


def main(argv=None) -> TrainResult:
    return run(train, parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
