"""Resident memory of a model over many input resolutions: the fast model's cached programs
against eager PyTorch (issue 14, item 18).

    python benchmarks/memory.py LARGE fast      # or SMALL, eager

Runs one batch-1 forward at each of 200 resolutions (64..462 px) and prints the growth of the
process's RSS after 10, 50 and 200 of them, and after the model is deleted.
"""
import gc
import sys

import torch

import mnv3_fast
from mnv3_fast import reference


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    torch.set_num_threads(1)
    arch, which = sys.argv[1], sys.argv[2]
    ref = reference.MobileNetV3(arch).eval()
    model = mnv3_fast.convert(ref) if which == "fast" else ref
    with torch.inference_mode():
        model(torch.randn(1, 3, 64, 64))
        base = rss_mib()
        for i, s in enumerate(range(64, 64 + 2 * 200, 2)):
            model(torch.randn(1, 3, s, s))
            if i in (9, 49, 199):
                print(f"{which} {arch}: after {i + 1} resolutions +{rss_mib() - base:.0f} MiB", flush=True)
        del model, ref
        gc.collect()
        print(f"{which} {arch}: after deleting the model +{rss_mib() - base:.0f} MiB")


if __name__ == "__main__":
    main()
