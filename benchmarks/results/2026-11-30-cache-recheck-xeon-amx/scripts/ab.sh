#!/bin/bash
# old: a git worktree of 73d746f with its extension built in /tmp/s8/old; new: the working tree (39b6ca6 without its final comments)
# alternating old/new processes: wall ms per call, b1, 1 and 2 threads
. /work/main/.venv/bin/activate
W=/work/main/benchmarks/results/2026-11-30-amx-tiles-xeon-amx/scripts/wall.py
DT=${DT:-bf16}
for r in $(seq 1 ${R:-6}); do
  for v in old new; do d=/work/main; [ $v = old ] && d=/tmp/s8/old
    for a in small large; do echo "$r $v $a $DT $(cd $d && PYTHONPATH=$d python $W $a $DT) load $(cut -d' ' -f1 /proc/loadavg)"; done
  done
done
