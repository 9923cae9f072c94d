"""How many threads a CPU program runs on: all of torch's, or one, whichever is faster now.

On a machine where another process takes a core, OpenMP threads that meet at a
barrier wait for the descheduled one at every parallel region, and the CPU
program has hundreds per forward: measured on a 2-vCPU Xeon with one core busy,
Small at batch 1 took 569 ms on 2 threads against 18 ms on 1 (libgomp's default
wait policy spins; `OMP_WAIT_POLICY=PASSIVE` avoids it, but only if set before
torch loads OpenMP).  So each program times its calls and keeps to the faster of
the two settings: every `PROBE_EVERY` calls, or at once when a call takes far
longer than usual, it runs one call on the other setting.  On a quiet machine
that costs one slower call in `PROBE_EVERY`.  The choice applies to that call's
parallel regions only (OpenMP's per-thread setting): torch's own setting is
left alone.
"""
from __future__ import annotations

import statistics
import time
from collections import deque
from typing import Callable

import torch


class ThreadTiming:
    """Recent call times of one program at each thread setting, and the choice they make."""

    PROBE_EVERY = 64  # calls between two probes of the other setting
    SAMPLES = 5  # recent calls per setting that a choice is made on
    MIN_SAMPLES = 3
    STALL = 4.0  # a call this many times slower than usual triggers a probe at once

    def __init__(self):
        self.times: dict[int, deque] = {}
        self.calls = 0
        self.probe_next = False

    def _median(self, threads: int) -> float:
        recent = self.times.get(threads, ())
        return statistics.median(recent) if len(recent) >= self.MIN_SAMPLES else float("inf")

    def choose(self, all_threads: int) -> int:
        if all_threads <= 1:
            return all_threads
        self.calls += 1
        for threads in (all_threads, 1):  # first a few calls at each setting
            if len(self.times.get(threads, ())) < self.MIN_SAMPLES:
                return threads
        best = 1 if self._median(1) < self._median(all_threads) else all_threads
        if self.probe_next or self.calls % self.PROBE_EVERY == 0:
            self.probe_next = False
            return all_threads if best == 1 else 1
        return best

    def record(self, threads: int, seconds: float) -> None:
        recent = self.times.setdefault(threads, deque(maxlen=self.SAMPLES))
        usual = self._median(threads)
        recent.append(seconds)
        if seconds > self.STALL * usual:
            self.probe_next = True


def run_timed(timing: ThreadTiming, run: Callable[[int], torch.Tensor], adaptive: bool = True) -> torch.Tensor:
    """run(threads) on the setting `timing` chooses (0: torch's own when not adaptive)."""
    if not adaptive:
        return run(0)
    threads = timing.choose(torch.get_num_threads())
    start = time.perf_counter()
    out = run(threads)
    timing.record(threads, time.perf_counter() - start)
    return out
