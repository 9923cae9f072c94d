"""Runs several finetune / predict jobs one after another in each rank of ONE torchrun
launch (starting the ranks costs seconds; the jobs take less), for tests/test_distributed.py.

    torchrun --standalone --nproc-per-node 2 tests/_distributed_jobs.py JOBS.json

JOBS.json: a list of {"module": "finetune" | "predict", "argv": [...], "dump": path or null}.
The process group is set up once here and the jobs' main(argv) use it (a group
destroyed and set up again under torchrun's agent store hangs); the modules' own set-up
is what `python -m` under torchrun exercises.  For finetune, "dump" ("{rank}" filled in)
receives this rank's trained state: model state_dict, optimizer state_dict, step.
"""
import json
import sys

import torch
import torch.distributed as dist

from mnv3_fast import finetune, predict


def run(jobs: list) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for job in jobs:
        module = {"finetune": finetune, "predict": predict}[job["module"]]
        result = module.main(job["argv"])
        if job.get("dump"):
            torch.save({"model": result.model.state_dict(), "optimizer": result.optimizer.state_dict(),
                        "step": result.step}, job["dump"].format(rank=rank))
    dist.destroy_process_group()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        run(json.load(f))
