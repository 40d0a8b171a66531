"""Finite differences, huge scores and very long chains."""

from __future__ import annotations

import numpy as np

import expsoftmax as es
from oracle import brute_force, chain_log_z, random_forest


def test_gradient_matches_central_finite_differences():
    rng = np.random.default_rng(10)
    g = random_forest(rng, 6)
    c = 3
    s_n = rng.normal(size=(2, 6, c))
    s_e = rng.normal(size=(g.num_edges, c, c))
    y = rng.integers(0, c, (2, 6))
    _, gn, ge = es.loss_and_grad(g, s_n, s_e, y)
    h = 1e-6

    def total(a, b):
        return float(es.loss_and_grad(g, a, b, y)[0].sum())

    for idx in np.ndindex(s_n.shape):
        d = np.zeros_like(s_n)
        d[idx] = h
        fd = (total(s_n + d, s_e) - total(s_n - d, s_e)) / (2 * h)
        assert abs(fd - gn[idx]) < 1e-7, idx
    for idx in np.ndindex(s_e.shape):
        d = np.zeros_like(s_e)
        d[idx] = h
        fd = (total(s_n, s_e + d) - total(s_n, s_e - d)) / (2 * h)
        assert abs(fd - ge[idx]) < 1e-7, idx


def test_scores_of_magnitude_1e4_stay_finite_and_exact():
    rng = np.random.default_rng(11)
    for dtype, tol in ((np.float64, 1e-9), (np.float32, 1e-4)):
        for _ in range(20):
            g = random_forest(rng, 6)
            s_n = rng.uniform(-1e4, 1e4, (6, 3)).astype(dtype)
            s_e = rng.uniform(-1e4, 1e4, (g.num_edges, 3, 3)).astype(dtype)
            lz, node, edge, _, _ = brute_force(g, s_n, s_e)
            r = es.infer(g, s_n, s_e)
            assert np.isfinite(r.log_z) and np.isfinite(r.node_marginals).all()
            assert abs(float(r.log_z) - lz) <= tol * abs(lz)
            np.testing.assert_allclose(r.node_marginals, node, atol=tol)
            np.testing.assert_allclose(r.edge_marginals, edge, atol=tol)
            y = np.zeros(6, dtype=np.int64)
            loss, gn, ge = es.loss_and_grad(g, s_n, s_e, y)
            assert np.isfinite(loss) and np.isfinite(gn).all() and np.isfinite(ge).all()


def test_large_chain_scores_against_log_domain_reference():
    rng = np.random.default_rng(12)
    n, c = 200, 5
    s_n = rng.normal(0, 3e3, (n, c))
    s_e = rng.normal(0, 3e3, (n - 1, c, c))
    want = chain_log_z(s_n, s_e)
    got = float(es.infer(es.Graph.chain(n), s_n, s_e).log_z)
    assert abs(got - want) <= 1e-12 * abs(want)


def test_chain_of_1e5_nodes_keeps_full_accuracy():
    rng = np.random.default_rng(13)
    n, c = 100_000, 4
    s_n = rng.normal(size=(n, c))
    t = rng.normal(size=(1, c, c))
    g = es.Graph.chain(n)
    want = chain_log_z(s_n, t)
    r64 = es.infer(g, s_n, t)
    assert abs(float(r64.log_z) - want) <= 1e-10 * abs(want)
    np.testing.assert_allclose(r64.node_marginals.sum(-1), 1.0, atol=1e-12)
    # float32 inputs: log Z to float32 rounding of a ~1.7e5 value, marginals to 1e-5.
    r32 = es.infer(g, s_n.astype(np.float32), t.astype(np.float32))
    assert abs(float(r32.log_z) - want) <= 2e-6 * abs(want)
    ref32 = es.infer(
        g, s_n.astype(np.float32).astype(np.float64), t.astype(np.float32).astype(np.float64)
    )
    assert np.abs(r32.node_marginals - ref32.node_marginals).max() < 1e-5
    assert np.abs(r32.edge_marginals - ref32.edge_marginals).max() < 1e-5
