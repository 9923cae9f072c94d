"""Trains the network the precision checks use: MobileNetV3-Small (width 0.75, 10 classes) on
`mnv3_fast.testing.synthetic_shapes` at 48x48, on the CPU, in a few minutes, deterministically
from its seeds (bit-exact on one machine; other CPUs round differently, not worse).

    python benchmarks/train_shapes.py                 # writes benchmarks/data/shapes_small075.pt

The checkpoint is committed (a float16 state_dict, ~2 MB), so the precision checks
(benchmarks/accuracy.py, tests/test_quantized.py) need no training run.
"""
from __future__ import annotations

import argparse
import math
import os
import time

import torch
import torch.nn.functional as F

from mnv3_fast import reference
from mnv3_fast.testing import SHAPES, synthetic_shapes

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "data", "shapes_small075.pt")
CONFIG = dict(model_mode="SMALL", multiplier=0.75, num_classes=len(SHAPES), dropout_rate=0.1)
SIZE = 48
TRAIN_SEED, TEST_SEED = 1, 2  # the held-out set's seed differs from every training chunk's


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", default=DEFAULT_OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = reference.MobileNetV3(**CONFIG).to(memory_format=torch.channels_last)
    with torch.no_grad():  # (the default init's classifier starts at logits of ~10: slow to unlearn)
        model.out_conv2[3].weight.mul_(0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.02)
    chunk = 4096  # images generated at a time (fresh images: no overfitting to a fixed set)
    start = time.time()
    model.train()
    for step in range(args.steps):
        if step * args.batch % chunk == 0:
            images, labels = synthetic_shapes(chunk, SIZE, seed=1000 * TRAIN_SEED + step * args.batch // chunk)
        i = step * args.batch % chunk
        x = images[i:i + args.batch].contiguous(memory_format=torch.channels_last)
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(model(x), labels[i:i + args.batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  lr {lr:.2e}  {time.time() - start:.0f} s", flush=True)
    model.eval()
    images, labels = synthetic_shapes(2000, SIZE, seed=TEST_SEED)
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    print(f"held-out top-1: {accuracy:.4f} ({len(labels)} images), {time.time() - start:.0f} s")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"config": CONFIG, "size": SIZE, "test_seed": TEST_SEED, "state_dict": state,
                "held_out_top1": accuracy}, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB)")


def load(path: str = DEFAULT_OUT) -> reference.MobileNetV3:
    """The trained reference model (float32, eval mode)."""
    ckpt = torch.load(path, weights_only=True)
    model = reference.MobileNetV3(**ckpt["config"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()})
    return model.eval()


if __name__ == "__main__":
    main()
