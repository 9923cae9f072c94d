"""How many threads a CPU program runs on: all of torch's, or one, whichever is faster now.

On a machine where another process takes a core, OpenMP threads that meet at a
barrier wait for the descheduled one at every parallel region, and the CPU
program has hundreds per forward: measured on a 2-vCPU Xeon with one core busy,
Small at batch 1 took 569 ms on 2 threads against 18 ms on 1 (libgomp's default
wait policy spins; `OMP_WAIT_POLICY=PASSIVE` avoids it, but only if set before
torch loads OpenMP).  So each program times its calls and keeps to the faster of
the two settings: every `PROBE_EVERY` calls, or at once when a call takes far
longer than usual, it runs one call on the other setting; a probe that beats
the chosen setting is followed by another at once, so a setting that became
faster wins within a few calls (one probe every `PROBE_EVERY` calls would need
three probes, ~200 calls, to outvote the old samples).  On a quiet machine that
costs one slower call in `PROBE_EVERY`.  The first call on each setting is not
counted: it runs cold (oneDNN generates its kernels, pages are first touched),
and counting it made `benchmarks/run.py` keep Large bf16 batch 1 on one thread
(3.7 ms a call) where two took 2.3-2.5 ms, for most of a cell.  The choice
applies to that call's parallel regions only (OpenMP's per-thread setting):
torch's own setting is left alone.  At the start each setting runs a few calls,
except that one thread stops as soon as its counted calls all lost by far
(`CLEAR_LOSS`): at batch 32 each exploring call is a whole batch at up to twice
the time.  An exploration so cut short is not resumed; the probes add its samples.

A program is packed for the thread count it runs on: oneDNN picks the blocked
layout of a conv's weights by the number of threads, and a conv that finds its
weights in another layout re-packs them on every call.  Measured on a 2-vCPU
Xeon (AMX): Large bf16 batch 1 packed on 2 threads and run on 1 spent 3 x 11 ms
per call re-packing the 160->960 convs, which made every probe of the other
setting cost 7x a normal call.  So each setting gets its own packed program
(`packed_for`), and one `ThreadTiming` per input shape chooses between them.
"""
from __future__ import annotations

import contextlib
import time
from collections import deque
from typing import Callable, TypeVar

import torch


class ThreadTiming:
    """Recent call times of one program at each thread setting, and the choice they make."""

    PROBE_EVERY = 64  # calls between two probes of the other setting
    SAMPLES = 5  # recent calls per setting that a choice is made on
    MIN_SAMPLES = 3
    STALL = 4.0  # a call this many times slower than usual triggers a probe at once
    COLD_CALLS = 1  # calls on each setting that are not counted (the first runs cold)
    CLEAR_LOSS = 1.3  # one thread's exploration ends once all its counted calls were this much slower

    def __init__(self):
        self.times: dict[int, deque] = {}
        self.cold: dict[int, int] = {}  # calls left uncounted, per setting
        self.calls = 0
        self.probe_next = False
        self.best = None  # the setting the last choice preferred (None before every setting has samples)
        self.one_thread_cut = False  # one thread's exploration ended early (clearly slower): not resumed

    def _median(self, threads: int) -> float:
        recent = self.times.get(threads, ())
        # (the upper median, without the statistics module: this runs twice per call)
        return sorted(recent)[len(recent) // 2] if len(recent) >= self.MIN_SAMPLES else float("inf")

    def choose(self, all_threads: int) -> int:
        if all_threads <= 1:
            return all_threads
        self.calls += 1
        # First a few calls at each setting (one thread's cut short where it clearly loses).
        if len(self.times.get(all_threads, ())) < self.MIN_SAMPLES:
            return all_threads
        if len(self.times.get(1, ())) < self.MIN_SAMPLES and not self.one_thread_cut:
            if not self._clearly_slower(1, all_threads):
                return 1
            self.one_thread_cut = True  # (were it resumed whenever the other median rose, calls that ran cold
            # after another engine's in benchmarks/run.py sent it back to one thread again and again)
        best = self.best = 1 if self._median(1) < self._median(all_threads) else all_threads
        if self.probe_next or self.calls % self.PROBE_EVERY == 0:
            self.probe_next = False
            return all_threads if best == 1 else 1
        return best

    def _clearly_slower(self, threads: int, than: int) -> bool:
        """Whether `threads`, short of MIN_SAMPLES, lost by far on every counted call: then more exploring calls
        would only cost time (at batch 32 each is a whole batch at up to twice the time; benchmarks/run.py
        saw its first three samples of Small fp32 b32 at 1.45 ms/image against 1.14 after), and the
        probes every PROBE_EVERY calls still add its samples."""
        recent = self.times.get(threads, ())
        return (0 < len(recent) < self.MIN_SAMPLES and len(self.times.get(than, ())) >= self.MIN_SAMPLES
                and min(recent) > self.CLEAR_LOSS * self._median(than))

    def record(self, threads: int, seconds: float) -> None:
        cold = self.cold.setdefault(threads, self.COLD_CALLS)
        if cold:
            self.cold[threads] = cold - 1
            return
        recent = self.times.setdefault(threads, deque(maxlen=self.SAMPLES))
        usual = self._median(threads)
        recent.append(seconds)
        if seconds > self.STALL * usual:
            self.probe_next = True
        elif self.best is not None and threads != self.best and seconds < self._median(self.best):
            self.probe_next = True  # a probe that wins: probe again, until the choice follows


P = TypeVar("P")


@contextlib.contextmanager
def packed_for(threads: int):
    """Packs weights (in this block) for `threads` threads: oneDNN reads the count when it picks a layout."""
    saved = torch.get_num_threads()
    if threads == saved:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def run_timed(timing: ThreadTiming, program: Callable[[int], P], run: Callable[[P, int], torch.Tensor],
              adaptive: bool = True) -> torch.Tensor:
    """run(program(threads), threads) on the thread count `timing` chooses (torch's own when not
    adaptive); `program` (which may build and pack) is not timed."""
    all_threads = torch.get_num_threads()
    if not adaptive:
        return run(program(all_threads), all_threads)
    threads = timing.choose(all_threads)
    prepared = program(threads)
    start = time.perf_counter()
    out = run(prepared, threads)
    timing.record(threads, time.perf_counter() - start)
    return out
