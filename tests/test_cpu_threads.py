"""The CPU program's thread choice (mnv3_fast/backends/cpu/threads.py): all of torch's threads or
one, whichever recent calls say is faster; and run_cpu_program's `threads` argument."""
import pytest
import torch
from conftest import randn

import mnv3_fast
from mnv3_fast.backends.cpu.threads import ThreadTiming
from mnv3_fast.ops import cpu_program as cp


def drive(timing, cost, calls, all_threads=2):
    """Runs `calls` choices, each "taking" cost(threads, call) seconds; returns the choices."""
    chosen = []
    for call in range(calls):
        threads = timing.choose(all_threads)
        timing.record(threads, cost(threads, call))
        chosen.append(threads)
    return chosen


def test_quiet_machine_stays_on_all_threads_but_probes():
    chosen = drive(ThreadTiming(), lambda t, _: {2: 1.0, 1: 1.8}[t], 400)
    assert chosen[:3] == [2, 2, 2] and chosen[3:6] == [1, 1, 1]  # a few calls at each setting first
    ones = chosen[6:].count(1)
    assert 0 < ones <= 400 // ThreadTiming.PROBE_EVERY + 1  # then one probe in PROBE_EVERY


def test_a_busy_core_moves_it_to_one_thread_within_a_few_calls():
    busy_from = 100
    cost = lambda t, call: {2: 1.0, 1: 1.8}[t] if call < busy_from else {2: 40.0, 1: 2.0}[t]  # noqa: E731
    chosen = drive(ThreadTiming(), cost, 300)
    assert chosen[busy_from - 5:busy_from] == [2] * 5
    slow = chosen[busy_from:].count(2)  # a few stalled calls, then only the probes
    assert slow <= 3 + 200 // ThreadTiming.PROBE_EVERY + 1
    assert chosen[busy_from + 8:busy_from + 20] == [1] * 12


def test_and_back_when_the_core_is_free_again():
    cost = lambda t, call: {2: 40.0, 1: 2.0}[t] if call < 100 else {2: 1.0, 1: 1.8}[t]  # noqa: E731
    chosen = drive(ThreadTiming(), cost, 100 + 4 * ThreadTiming.PROBE_EVERY)
    assert chosen[90:100].count(1) >= 9
    assert chosen[-ThreadTiming.PROBE_EVERY // 2:].count(2) >= ThreadTiming.PROBE_EVERY // 2 - 1


def test_one_thread_machines_are_left_alone():
    assert drive(ThreadTiming(), lambda t, _: 1.0, 10, all_threads=1) == [1] * 10


def test_threads_argument_changes_nothing_but_the_threads():
    torch.manual_seed(0)
    model = mnv3_fast.mobilenet_v3_small(num_classes=10).eval()
    x = randn(2, 3, 64, 64)
    program = mnv3_fast.backends.CPU_PROGRAM.program(model, x, mnv3_fast.backends.make_call(model, x))
    before = torch.get_num_threads()
    outs = [cp.run_cpu_program(x, program.tensors, program.program, threads) for threads in (0, 1, 2)]
    assert torch.get_num_threads() == before  # (the setting is the call's own)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[2], outs[0], rtol=1e-5, atol=1e-5)
    for run in (cp.run_cpu_program, cp.run_cpu_program_reference):
        with pytest.raises(ValueError, match="expected threads >= 0"):
            run(x, program.tensors, program.program, -1)
