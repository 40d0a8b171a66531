"""Thread count control, and the core inside forked worker processes."""

from __future__ import annotations

import multiprocessing as mp

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
