"""The decode thread tuner (lmx.models.layers._DecodeThreads) on simulated timings: it settles on the faster way,
one slow call does not flip it, it comes back when the machine changes, and LMX_CPU_DECODE_THREADS fixes it."""

from lmx.models.layers import _DecodeThreads

NBYTES = 1 << 22


def _run(tuner, cost, calls):
    """``calls`` calls; ``cost(parallel, i)`` seconds per byte of call i. Returns the choices made."""
    chosen = []
    for i in range(calls):
        parallel = tuner.choose()
        tuner.record(parallel, cost(parallel, i) * NBYTES, NBYTES)
        chosen.append(parallel)
    return chosen


def test_settles_on_all_threads_when_faster():
    tuner = _DecodeThreads()
    chosen = _run(tuner, lambda p, i: 1.0 if p else 2.0, 200)
    assert chosen[0] is False  # one thread first
    assert all(chosen[1 : 1 + _DecodeThreads.PROBE_CALLS])  # then a probe of all
    assert tuner.current is True
    assert sum(not c for c in chosen[20:]) <= 3 * _DecodeThreads.PROBE_CALLS  # probes back off: 16, 32, 64 calls


def test_stays_on_one_thread_when_all_is_slower():
    tuner = _DecodeThreads()
    chosen = _run(tuner, lambda p, i: 20.0 if p else 1.0, 2000)
    assert tuner.current is False
    assert sum(chosen) <= 6 * _DecodeThreads.PROBE_CALLS  # probes back off: 16, 32, 64, ... calls apart
    assert tuner.interval > _DecodeThreads.PROBE_EVERY


def test_one_late_call_does_not_flip_it():
    tuner = _DecodeThreads()
    _run(tuner, lambda p, i: 1.0 if p else 2.0, 50)
    assert tuner.current is True
    # every 7th parallel call waits for a woken thread (10x); the median still says all threads
    chosen = _run(tuner, lambda p, i: (10.0 if i % 7 == 0 else 1.0) if p else 2.0, 500)
    assert tuner.current is True and sum(chosen) > 450


def test_follows_a_change_of_load():
    tuner = _DecodeThreads()
    _run(tuner, lambda p, i: 1.0 if p else 2.0, 100)
    assert tuner.current is True
    _run(tuner, lambda p, i: 50.0 if p else 2.0, 100)  # other jobs arrive: forking is 25x slower
    assert tuner.current is False
    _run(tuner, lambda p, i: 1.0 if p else 2.0, 3000)  # and leave
    assert tuner.current is True


def test_fixed_by_the_environment_value():
    for fixed, expected in (("1", False), ("all", True)):
        tuner = _DecodeThreads(fixed)
        assert set(_run(tuner, lambda p, i: 1.0 if p else 2.0, 50)) == {expected}
