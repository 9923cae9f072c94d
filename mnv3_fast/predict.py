"""Batch inference over many images, on one process or many (torchrun).

    torchrun --nproc-per-node 4 -m mnv3_fast.predict IMAGES... --model runs/x/last.pt --output-dir preds/
    python -m mnv3_fast.predict photos/ --model mobilenet_v3_large --pretrained --output-dir preds/

IMAGES: directories (searched recursively for image files), image files, or text
files listing one image path per line.  The images are split across the ranks
with `shard` (every rank takes every N-th image, nothing padded or repeated).
Each rank appends its top-k classes and scores to
OUTPUT_DIR/predictions.rank<R>.jsonl after every batch; rank 0 then merges the
rank files into OUTPUT_DIR/predictions.jsonl, in input order.  A rerun skips
every image already in a rank file, so an interrupted run resumes (also with
another number of ranks).  An unreadable file is skipped with a warning and
recorded in its rank file with an "error" field, so a rerun does not retry it.
For several hosts OUTPUT_DIR must be on a filesystem they share.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import torch
from torch.utils.data import DataLoader

from ._distributed import (IMAGE_EXTENSIONS, DistEnv, ImageFiles, collate_readable, eval_transform, is_image_file,
                           load_model, positive_int, run, shard, warn_ignored)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PART = "predictions.rank{rank}.jsonl"
MERGED = "predictions.jsonl"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mnv3_fast.predict", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", help="directories, image files, or text files with one image path per line")
    p.add_argument("--model", required=True,
                   help="checkpoint path (a finetune last.pt, or a torchvision / timm / seed / mnv3_fast state_dict) "
                        "or a torchvision / timm name")
    p.add_argument("--pretrained", action="store_true", help="with a model name: download its published weights")
    p.add_argument("--width-mult", type=float, default=None, help="width multiplier for a torchvision name")
    p.add_argument("--classes", default=None, help="text file with one class name per line (a finetune "
                                                   "checkpoint carries its own)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--topk", type=positive_int, default=5)
    p.add_argument("--batch-size", type=positive_int, default=64, help="per rank")
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--workers", type=int, default=4, help="data-loading processes per rank")
    p.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="auto: float16 on GPUs, float32 on CPUs")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    return p.parse_args(argv)


# ------------------------------------------------------------------ inputs


def collect_images(inputs: list) -> list:
    """The image paths `inputs` name, in a fixed order (directories walked sorted), each once."""
    paths, ignored = [], []
    for item in inputs:
        if os.path.isdir(item):
            for root, dirs, files in os.walk(item, followlinks=True):
                dirs.sort()
                for name in sorted(files):
                    (paths if is_image_file(name) else ignored).append(os.path.join(root, name))
        elif os.path.isfile(item) and is_image_file(item):
            paths.append(item)
        elif os.path.isfile(item):
            try:
                with open(item, encoding="utf-8") as f:
                    paths += [line.strip() for line in f if line.strip() and not line.startswith("#")]
            except UnicodeDecodeError:
                raise ValueError(f"{item}: neither an image (by its extension) nor a text file listing image "
                                 "paths, one per line") from None
        else:
            raise FileNotFoundError(f"{item}: no such file or directory (expected a directory, an image "
                                    "or a text file listing images)")
    warn_ignored(ignored, ", ".join(inputs))
    if not paths:
        raise ValueError(f"no images in {', '.join(inputs)}: expected image files ending in one of "
                         f"{', '.join(IMAGE_EXTENSIONS)}")
    return list(dict.fromkeys(paths))  # a path listed twice is predicted once


def _complete_lines(path: str):
    """The lines of a rank file that were written whole (a crash can cut the last one)."""
    with open(path) as f:
        for line in f:
            if line.endswith("\n"):
                yield json.loads(line)


def read_rows(out_dir: str) -> dict:
    """path -> row over every rank file in `out_dir` (of this run or an earlier one, any world size)."""
    rows: dict = {}
    for part in sorted(glob.glob(os.path.join(out_dir, PART.format(rank="*")))):
        for row in _complete_lines(part):
            rows.setdefault(row["path"], row)
    return rows


def _open_part(path: str):
    """The rank file, for appending after its last whole line."""
    if os.path.exists(path):
        with open(path, "rb+") as f:
            data = f.read()
            f.truncate(data.rfind(b"\n") + 1)  # drop a line cut short by a crash
    return open(path, "a")


# ------------------------------------------------------------------ running


def _class_names(args, from_checkpoint, num_classes: int):
    names = from_checkpoint
    if args.classes is not None:
        with open(args.classes) as f:
            names = [line.strip() for line in f if line.strip()]
    if names is not None and len(names) != num_classes:
        raise ValueError(f"{args.classes or args.model}: {len(names)} class names for a model with "
                         f"{num_classes} outputs")
    return names


def predict(args, env: DistEnv) -> dict:
    os.makedirs(args.output_dir, exist_ok=True)

    def plan():
        paths = collect_images(args.inputs)
        done = read_rows(args.output_dir)
        return paths, [p for p in paths if p not in done]

    # Rank 0 lists the images and what earlier runs did; every rank gets the same list.
    paths, remaining = env.on_main(plan)
    mine = shard(remaining, env.rank, env.world_size)

    model, checkpoint_classes = load_model(args.model, width_mult=args.width_mult, pretrained=args.pretrained)
    names = _class_names(args, checkpoint_classes, model.num_classes)
    dtype = DTYPES.get(args.dtype) or (torch.float16 if env.device.type == "cuda" else torch.float32)
    # channels_last is the fast layout on GPUs; on the CPU the fused forward's stem reads any layout.
    memory_format = torch.channels_last if env.device.type == "cuda" else torch.contiguous_format
    model = model.to(env.device, dtype, memory_format=memory_format).eval()
    k = min(args.topk, model.num_classes)

    loader = DataLoader(ImageFiles(mine, eval_transform(args.image_size)), batch_size=args.batch_size,
                        num_workers=args.workers if mine else 0, collate_fn=collate_readable,
                        pin_memory=env.device.type == "cuda")
    predicted = failed = 0
    start = time.perf_counter()
    with _open_part(os.path.join(args.output_dir, PART.format(rank=env.rank))) as out, torch.inference_mode():
        for indices, images, errors in loader:
            lines = [{"path": mine[i], "error": e} for i, e in errors]
            if images is not None:
                images = images.to(env.device, dtype, non_blocking=True, memory_format=memory_format)
                scores, classes = model(images).float().softmax(1).topk(k)
                for i, s, c in zip(indices, scores.tolist(), classes.tolist()):
                    row = {"path": mine[i], "indices": c, "scores": s}
                    if names is not None:
                        row["labels"] = [names[j] for j in c]
                    lines.append(row)
            out.write("".join(json.dumps(row) + "\n" for row in lines))
            out.flush()  # each batch on disk: an interrupted run loses at most the batch in flight
            predicted, failed = predicted + len(indices), failed + len(errors)
    if env.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start

    per_rank = env.gather({"rank": env.rank, "predicted": predicted, "failed": failed, "seconds": seconds})
    summary = {"images": len(paths), "resumed": len(paths) - len(remaining), "per_rank": per_rank,
               "predicted": sum(r["predicted"] for r in per_rank), "failed": sum(r["failed"] for r in per_rank)}
    summary["images_per_s"] = summary["predicted"] / max(max(r["seconds"] for r in per_rank), 1e-9)
    if env.is_main:
        summary.update(_merge(paths, args.output_dir))
        _report(summary, env)
    env.barrier()  # the merged file is written before any rank returns
    return summary


def _merge(paths: list, out_dir: str) -> dict:
    """Writes predictions.jsonl: one prediction per input path, in input order."""
    rows = read_rows(out_dir)
    merged = os.path.join(out_dir, MERGED)
    written = errors = 0
    with open(merged + ".tmp", "w") as f:
        for p in paths:
            row = rows.get(p)
            if row is None:
                continue
            if "error" in row:
                errors += 1
                continue
            f.write(json.dumps(row) + "\n")
            written += 1
    os.replace(merged + ".tmp", merged)
    return {"output": merged, "written": written, "unreadable": errors, "missing": len(paths) - written - errors}


def _report(s: dict, env: DistEnv) -> None:
    for r in s["per_rank"]:
        rate = r["predicted"] / max(r["seconds"], 1e-9)
        print(f"predict: rank {r['rank']}: {r['predicted']} images in {r['seconds']:.2f} s ({rate:.1f} img/s)"
              + (f", {r['failed']} unreadable" if r["failed"] else ""), flush=True)
    print(f"predict: total {s['predicted']} images on {env.world_size} rank(s), {s['images_per_s']:.1f} img/s; "
          f"{s['resumed']} done by an earlier run; {s['written']} predictions in {s['output']}"
          + (f", {s['unreadable']} unreadable files left out" if s["unreadable"] else ""), flush=True)
    if s["missing"]:
        print(f"predict: WARNING {s['missing']} images have no prediction; rerun to complete them", flush=True)


def main(argv=None) -> dict:
    return run(predict, parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
