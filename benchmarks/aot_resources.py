"""Prints the resource table of every Triton kernel variant the CUDA backend launches, compiled
for real without a GPU (registers, spill bytes, shared memory; sm_80 and sm_90).

    python benchmarks/aot_resources.py                    # with the installed triton
    python benchmarks/aot_resources.py --triton 3.6.0     # with another (pip-installed into a cache dir)
    python benchmarks/aot_resources.py --triton-dir DIR   # with the triton found in DIR

The variants come from running the backend's own program (mnv3_fast/backends/cuda/variants.py):
Large and Small at 224x224, batch 1 and 256, fp16/bf16/fp32.  tests/test_triton_aot.py fails on
any spill, with the installed triton and with triton 3.6 (the GPU machine's).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mnv3_fast.backends.cuda import variants  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triton", help="a triton version to pip-install into a cache dir and compile with")
    parser.add_argument("--triton-dir", help="a directory holding the triton package to compile with")
    parser.add_argument("--arch", default="80,90")
    parser.add_argument("--models", default="LARGE,SMALL")
    parser.add_argument("--batches", default="1,256")
    parser.add_argument("--dtypes", default="fp16,bf16,fp32")
    args = parser.parse_args()
    path = args.triton_dir or (variants.triton_dir(args.triton) if args.triton else None)
    result = variants.run_subprocess(path, ["--arch", args.arch, "--models", args.models, "--batches", args.batches,
                                            "--dtypes", args.dtypes])
    print(variants.table(result["rows"], result["triton"]))
    print(f"\n{len(result['rows'])} variants, compiled in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
