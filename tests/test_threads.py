"""Thread count control, and the core inside forked worker processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import expsoftmax as es


def test_set_and_get_num_threads():
    before = es.get_num_threads()
    try:
        es.set_num_threads(1)
        assert es.get_num_threads() == 1
        g = es.Graph.grid(70, 70)  # big enough to split work inside one item
        rng = np.random.default_rng(0)
        s_n, s_e = rng.normal(size=(4900, 3)), rng.normal(0, 0.3, (g.num_edges, 3, 3))
        a = es.infer(g, s_n, s_e, max_iter=5, tol=0, method="bp")
        es.set_num_threads(2)
        assert es.get_num_threads() == 2
        b = es.infer(g, s_n, s_e, max_iter=5, tol=0, method="bp")
        np.testing.assert_array_equal(a.node_marginals, b.node_marginals)
        with pytest.raises(ValueError):
            es.set_num_threads(-1)
    finally:
        es.set_num_threads(0)
    assert es.get_num_threads() == before


def _mixed_calls(seed: int) -> list:
    """A few small calls of each kind (the size where the pool's threads linger between
    calls), their results as arrays."""
    rng = np.random.default_rng(seed)
    g, ch = es.Graph.grid(24, 24), es.Graph.chain(40)
    out = []
    for _ in range(6):
        sn = rng.normal(size=(g.num_nodes, 3)).astype(np.float32)
        se = rng.normal(size=(g.num_edges, 3, 3)).astype(np.float32)
        r = es.infer(g, sn, se, method="bp", max_iter=3, tol=0, damping=0.5)
        out += [r.node_marginals, r.log_z]
        cn, ce = rng.normal(size=(16, 40, 5)), rng.normal(size=(16, 39, 5, 5))
        out += list(es.loss_and_grad(ch, cn, ce, rng.integers(0, 5, (16, 40))))
    return out


@pytest.mark.filterwarnings("ignore::expsoftmax.ConvergenceWarning")
def test_calls_from_several_python_threads_give_the_serial_results():
    # The pool's threads stay awake between calls, running whatever the pool is given:
    # calls made at once from four Python threads all finish, each with the results it
    # gets alone (a job left waiting on a thread's stack would hang here instead).
    serial = [_mixed_calls(seed) for seed in range(4)]
    with ThreadPoolExecutor(4) as ex:
        futures = [ex.submit(_mixed_calls, seed) for seed in range(4)]
        together = [f.result(timeout=120) for f in futures]
    for a, b in zip(serial, together):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


@pytest.mark.filterwarnings("ignore::expsoftmax.ConvergenceWarning")
def test_resizing_the_pool_right_after_a_call_works():
    # The old pool's threads may still be awake from the call when it is replaced.
    try:
        for n in (2, 1, 3, 2):
            es.set_num_threads(n)
            a = _mixed_calls(7)
            es.set_num_threads(1)
            b = _mixed_calls(7)
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
    finally:
        es.set_num_threads(0)


_SPIN_WORKLOAD = """
import json, sys, warnings
import numpy as np
import expsoftmax as es
sys.path.insert(0, sys.argv[1])
from test_threads import _mixed_calls
warnings.simplefilter("ignore")
es.set_num_threads(2)
out = [np.asarray(a, dtype=np.float64).ravel().tolist() for a in _mixed_calls(3)]
json.dump({"spin": es.config()["spin_us"], "out": out}, sys.stdout)
"""


def test_the_spin_setting_changes_timing_only():
    runs = {}
    for spin in ("0", "50", "1000000"):
        r = subprocess.run(
            [sys.executable, "-c", _SPIN_WORKLOAD, os.path.dirname(__file__)],
            env={**os.environ, "EXPSOFTMAX_SPIN_US": spin},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        runs[spin] = json.loads(r.stdout)
        assert runs[spin]["spin"] == int(spin)
    assert runs["0"]["out"] == runs["50"]["out"] == runs["1000000"]["out"]


def _child(q):
    g = es.Graph.chain(50)
    r = es.infer(g, np.zeros((8, 50, 3)), np.zeros((3, 3)))
    q.put(float(r.log_z.sum()))


def test_forked_process_gets_a_working_pool():
    # Use the pool in the parent first, so the child inherits a started pool.
    es.infer(es.Graph.chain(50), np.zeros((8, 50, 3)), np.zeros((3, 3)))
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(timeout=60)
    assert p.exitcode == 0, "forked child hung or failed"
    assert abs(q.get(timeout=5) - 8 * 50 * np.log(3)) < 1e-9


def test_dataloader_workers_can_use_the_core():
    torch = pytest.importorskip("torch")

    class Scores(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            g = es.Graph.chain(20)
            r = es.infer(g, np.full((20, 3), float(i)), np.zeros((3, 3)))
            return torch.tensor(float(r.log_z))

    es.infer(es.Graph.chain(5), np.zeros((5, 2)), np.zeros((2, 2)))  # parent pool started
    loader = torch.utils.data.DataLoader(
        Scores(), batch_size=4, num_workers=2, multiprocessing_context="fork", timeout=60
    )
    out = torch.cat(list(loader))
    want = torch.tensor([20 * (i + np.log(3)) for i in range(8)], dtype=out.dtype)
    assert torch.allclose(out, want)
