"""The CPU program's thread choice (mnv3_fast/backends/cpu/threads.py): all of torch's threads or
one, whichever recent calls say is faster; and run_cpu_program's `threads` argument."""
import pytest
import torch
from conftest import needs_onednn_bf16, randn

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
    first = ThreadTiming.COLD_CALLS + ThreadTiming.MIN_SAMPLES  # a few calls on all threads first
    one = ThreadTiming.COLD_CALLS + 1  # then one thread until a counted call loses by far (1.8 > 1.3 x 1.0)
    assert chosen[:first] == [2] * first and chosen[first:first + one + 1] == [1] * one + [2]
    ones = chosen[first + one:].count(1)
    assert 0 < ones <= 400 // ThreadTiming.PROBE_EVERY + 1  # then one probe in PROBE_EVERY


def test_a_close_call_is_sampled_fully():
    chosen = drive(ThreadTiming(), lambda t, _: {2: 1.0, 1: 1.2}[t], 40)
    first = ThreadTiming.COLD_CALLS + ThreadTiming.MIN_SAMPLES
    assert chosen[:2 * first] == [2] * first + [1] * first  # (1.2 is within CLEAR_LOSS: MIN_SAMPLES each)
    assert chosen[2 * first:] == [2] * (40 - 2 * first)


def test_an_exploration_cut_short_is_not_resumed():
    # benchmarks/run.py on a 2-vCPU Xeon (Large fp32 batch 1): the first call of each sample ran cold after
    # another engine's, which raised the median on two threads until one thread no longer looked clearly
    # slower, and its exploration resumed (9 of 45 calls on one thread, at 1.7x the time).
    cost = lambda t, call: {2: 1.0 if call < 20 else 1.5, 1: 1.8}[t]  # noqa: E731
    chosen = drive(ThreadTiming(), cost, 300)
    first = ThreadTiming.COLD_CALLS + ThreadTiming.MIN_SAMPLES + ThreadTiming.COLD_CALLS + 1
    assert chosen[first:].count(1) <= 300 // ThreadTiming.PROBE_EVERY + 1  # the probes only


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
    # the first probe after the core is free wins and is repeated until the choice follows (not 3 probes
    # PROBE_EVERY calls apart)
    back = 100 + ThreadTiming.PROBE_EVERY + ThreadTiming.SAMPLES
    assert chosen[back:].count(1) <= (len(chosen) - back) // ThreadTiming.PROBE_EVERY + 1  # the probes only


def test_cold_first_calls_do_not_decide():
    # What benchmarks/run.py saw on a 2-vCPU Xeon (Large bf16 batch 1, ms): the first calls on two threads
    # ran cold (kernel generation, first-touch pages) and outvoted the warm ones, which kept the program
    # on one thread (3.7 ms) while two took 2.5 ms.
    cold = [5.2, 3.9]
    cost = lambda t, call: 3.7 if t == 1 else (cold.pop(0) if cold else 2.5)  # noqa: E731
    chosen = drive(ThreadTiming(), cost, 200)
    assert chosen[20:].count(1) <= 200 // ThreadTiming.PROBE_EVERY + 1


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


def _libc_flush():
    import ctypes
    ctypes.CDLL(None).fflush(None)  # oneDNN's verbose lines go through C's stdout buffer


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_onednn_bf16), "int8"])
def test_each_thread_count_runs_weights_packed_for_it(precision, capfd):
    """oneDNN picks a conv's weight layout by the thread count, and a conv that finds another layout
    re-packs its weights on every call (on an AMX Xeon: 11 ms for one 160->960 conv in bf16, when the
    adaptive thread choice ran a program packed on 2 threads on 1).  After the first call at each
    count (which packs), no call may run a oneDNN reorder.  Where the layouts happen to agree (no
    AMX or VNNI), or where the program runs no oneDNN op at all (PWCONV everywhere), this passes
    either way; a oneDNN conv outside the model shows that the verbose output is captured."""
    torch.manual_seed(0)
    model = mnv3_fast.mobilenet_v3_small().eval()
    x = randn(1, 3, 224, 224)
    if precision == "bf16":
        model, x = model.bfloat16(), x.bfloat16()
    elif precision == "int8":
        model = mnv3_fast.quantize(model, [randn(2, 3, 224, 224)])
    model.cpu_adaptive_threads = False
    before = torch.get_num_threads()
    try:
        with torch.inference_mode():
            for threads in (2, 1):
                torch.set_num_threads(threads)
                model(x)  # packs for this count
            _libc_flush()
            capfd.readouterr()
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                torch.ops.mkldnn._convolution_pointwise(randn(1, 8, 5, 5), randn(8, 8, 1, 1), None, [0, 0], [1, 1],
                                                        [1, 1], 1, "none", [], "")
                _libc_flush()
                sentinel = [line for line in capfd.readouterr().out.splitlines() if ",exec," in line]
                for threads in (2, 1, 2, 1):
                    torch.set_num_threads(threads)
                    model(x)
                _libc_flush()
    finally:
        torch.set_num_threads(before)
    assert sentinel, "oneDNN's verbose mode printed nothing for a conv: the check would be blind"
    lines = [line for line in capfd.readouterr().out.splitlines() if ",exec," in line]
    assert not [line for line in lines if ",reorder," in line]
