"""Timing helper shared by the benches."""

from __future__ import annotations

import time


def per_unit(run, k1: int, k2: int, repeats: int = 3) -> float:
    """Seconds per unit of work of ``run(k)`` (k iterations, sweeps...): the best over
    ``repeats`` of ``(t(k2) - t(k1)) / (k2 - k1)``, so fixed costs (setup, output) cancel.
    Both lengths run once first (warm-up, JIT compilation)."""
    run(k1)
    run(k2)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(k1)
        t1 = time.perf_counter()
        run(k2)
        t2 = time.perf_counter()
        best = min(best, ((t2 - t1) - (t1 - t0)) / (k2 - k1))
    return best


def best_of(f, repeats: int) -> float:
    """Milliseconds of the fastest of ``repeats`` whole calls of ``f()``, after warm-up
    calls (at least one, and at least 0.2 s of them: a training loop's steady state, with
    the thread pool awake and the allocator's pages in use; whole calls: fixed costs
    included)."""
    t0 = time.perf_counter()
    f()
    while time.perf_counter() - t0 < 0.2:
        f()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts) * 1e3


def machine_rates() -> tuple[float, float]:
    """This machine's physical rates for the bound columns, measured once, one thread:
    bytes per second of a large copy (read + write counted), and float32 exponentials per
    second of numpy's vectorised ``np.exp``."""
    import numpy as np

    a = np.ones(1 << 24, np.float32)  # 64 MiB, beyond the caches
    b = np.empty_like(a)
    copy = min(_once(lambda: np.copyto(b, a)) for _ in range(5))
    x = np.linspace(-20, 0, 1 << 22, dtype=np.float32)
    y = np.empty_like(x)
    ex = min(_once(lambda: np.exp(x, out=y)) for _ in range(5))
    return 2 * a.nbytes / copy, x.size / ex


def copy_rate(nbytes: int, threads: int) -> float:
    """Bytes per second (read + write counted) of ``threads`` threads each copying its share
    of a working set of ``nbytes`` over and over: one thread's rate on its share, times
    ``threads`` (each core copies from its own caches where its share fits in them, as a
    kernel whose working set stays there reads it; the large copy of
    :func:`machine_rates` would understate that rate). Python threads would measure the
    GIL's hand-offs at these sizes, not the copy. Best of 5 rounds of at least 2 ms."""
    import numpy as np

    n = max(nbytes // (2 * 4 * threads), 1024)
    a, b = np.ones(n, np.float32), np.empty(n, np.float32)
    reps = max(1, int(2e-3 * 40e9 / (2 * 4 * n)))

    def work():
        for _ in range(reps):
            np.copyto(b, a)

    work()
    best = min(_once(work) for _ in range(5))
    return threads * reps * 2 * 4 * n / best


def _once(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t
