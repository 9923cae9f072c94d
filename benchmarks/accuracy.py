"""How much each lower precision changes a trained network's answers: bf16 and int8, for mnv3_fast
and for its peers, on the held-out images of the network trained by benchmarks/train_shapes.py
(MobileNetV3-Small 0.75 on synthetic shapes; its checkpoint is committed).

    python benchmarks/accuracy.py              # writes benchmarks/runs/<date>-accuracy/accuracy.md (and prints it)

Per engine: top-1 accuracy on the 2000 held-out images, and top-1 agreement with float32 eager
PyTorch.  Every int8 engine calibrates on the same 4 batches of 32 images from other seeds.
Issue 13's targets: >= 99% agreement in bf16, >= 97% in int8, and no worse than ONNX Runtime's int8.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import engines as E  # noqa: E402
from _timing import environment  # noqa: E402
from train_shapes import CONFIG, DEFAULT_OUT, SIZE, TEST_SEED, load  # noqa: E402

from mnv3_fast.testing import synthetic_shapes  # noqa: E402

# (engine key, precision) in table order
ROWS = [("eager", "fp32"), ("fast_cl", "fp32"), ("eager", "bf16"), ("fast_cl", "bf16"), ("compile", "bf16"),
        ("openvino", "bf16"), ("openvino_default", "fp32"), ("fast_cl", "int8"), ("onnxruntime", "int8"),
        ("openvino", "int8"), ("compile", "int8")]


class TrainedModels(E.Models):
    """The benchmark's Models, with the trained network and calibration images from the same task."""

    def __init__(self, checkpoint: str):
        self.arch, self.device, self.size = "small", "cpu", SIZE
        self.reference = load(checkpoint)
        self.torchvision_kwargs = dict(width_mult=CONFIG["multiplier"], num_classes=CONFIG["num_classes"])
        self.calibration = [synthetic_shapes(32, SIZE, seed=50 + i)[0] for i in range(4)]
        self._cache = {}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=DEFAULT_OUT)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch", type=int, default=250, help="images per call (mnv3_fast's int8 program differs "
                   "by batch size: its 1x1 convs run QPWCONV up to 8 images on AMX, oneDNN's int8 conv above)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    models = TrainedModels(args.checkpoint)
    images, labels = synthetic_shapes(args.images, SIZE, seed=TEST_SEED)
    batches = images.split(args.batch)
    with torch.inference_mode():
        fp32 = torch.cat([models.reference(b) for b in batches]).argmax(1)
    env = environment("cpu")
    lines = [f"# Precision: top-1 on a trained MobileNetV3-Small 0.75 ({env['cpu']})", "",
             f"{env['date']}; torch {env['torch']}; {args.images} held-out synthetic-shape images at {SIZE}x{SIZE}, {args.batch} per call; "
             f"checkpoint `{os.path.relpath(args.checkpoint, os.path.dirname(HERE))}`.", "",
             f"Command: `{env['command']}`", "",
             "| engine | precision | top-1 accuracy | top-1 agreement with fp32 eager |", "|---|---|---|---|"]
    for key, precision in ROWS:
        name = E.display_name(key, precision)
        try:
            engine = E.build(key, models, precision, torch.get_num_threads())
            if engine is None:
                continue
            first = engine.first_call or engine.run
            outs = [first(batches[0])] + [engine.run(b) for b in batches[1:]]
            top1 = torch.cat([o.float() for o in outs]).argmax(1)
            row = f"| {name} | {engine.precision} | {(top1 == labels).float().mean():.2%} | " \
                  f"{(top1 == fp32).float().mean():.2%} |"
        except Exception as exc:  # noqa: BLE001 (reported in the table)
            row = f"| {name} | {precision} | - | not run: {type(exc).__name__}: {str(exc)[:120]} |"
        print(row, flush=True)
        lines.append(row)
    out = args.out or os.path.join(HERE, "runs", f"{datetime.date.today().isoformat()}-accuracy")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "accuracy.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[:6]))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
