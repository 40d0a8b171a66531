"""Exact forest inference against brute-force enumeration.

Tolerances: 1e-10 absolute in float64, 1e-4 in float32 (marginals are O(1); log Z is
compared relative to max(1, |log Z|)).
"""

from __future__ import annotations

import numpy as np
import pytest

import expsoftmax as es
from oracle import brute_force, random_forest, scores_of

TOL = {np.float64: 1e-10, np.float32: 1e-4}


def _case(rng, n, c, scale=1.0):
    g = random_forest(rng, n)
    s_n = rng.normal(0, scale, (n, c))
    s_e = rng.normal(0, scale, (g.num_edges, c, c))
    return g, s_n, s_e


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_log_z_and_marginals_match_enumeration(dtype):
    rng = np.random.default_rng(0)
    for trial in range(120):
        n = int(rng.integers(1, 8))
        c = int(rng.integers(1, 6))
        if c**n > 20000:
            continue
        g, s_n, s_e = _case(rng, n, c, scale=1.5)
        s_n, s_e = s_n.astype(dtype), s_e.astype(dtype)
        lz, node, edge, _, _ = brute_force(g, s_n, s_e)
        r = es.infer(g, s_n, s_e)
        tol = TOL[dtype]
        assert r.log_z.dtype == dtype and r.node_marginals.dtype == dtype
        assert abs(float(r.log_z) - lz) <= tol * max(1.0, abs(lz)), trial
        np.testing.assert_allclose(r.node_marginals, node, atol=tol, rtol=0)
        np.testing.assert_allclose(r.edge_marginals, edge, atol=tol, rtol=0)
        assert r.converged.all() and r.method == "exact"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_loss_and_gradients_match_enumeration(dtype):
    rng = np.random.default_rng(1)
    for _ in range(60):
        n = int(rng.integers(1, 7))
        c = int(rng.integers(1, 5))
        g, s_n, s_e = _case(rng, n, c)
        s_n, s_e = s_n.astype(dtype), s_e.astype(dtype)
        y = rng.integers(0, c, n)
        lz, node, edge, _, _ = brute_force(g, s_n, s_e)
        gold = scores_of(g, s_n, s_e, y[None])[0]
        loss, gn, ge = es.loss_and_grad(g, s_n, s_e, y)
        tol = TOL[dtype]
        assert abs(float(loss) - (lz - gold)) <= tol * max(1.0, abs(lz))
        want_n = node.copy()
        want_n[np.arange(n), y] -= 1
        want_e = edge.copy()
        for e, (i, j) in enumerate(g.edges):
            want_e[e, y[i], y[j]] -= 1
        np.testing.assert_allclose(gn, want_n, atol=tol, rtol=0)
        np.testing.assert_allclose(ge, want_e, atol=tol, rtol=0)
        assert gn.dtype == dtype and ge.dtype == dtype


def test_batched_and_shared_edge_scores():
    """Batch shapes broadcast; a shared (1, C, C) table equals the same table per edge, and
    its gradient is the sum of the per-edge gradients over edges and items."""
    rng = np.random.default_rng(2)
    g = random_forest(rng, 6)
    c = 3
    s_n = rng.normal(size=(2, 3, 6, c))
    shared = rng.normal(size=(1, c, c))
    per_edge = np.broadcast_to(shared, (g.num_edges, c, c)).copy()
    y = rng.integers(0, c, (2, 3, 6))
    a = es.infer(g, s_n, shared)
    b = es.infer(g, s_n, per_edge)
    assert a.log_z.shape == (2, 3) and a.edge_marginals.shape == (2, 3, g.num_edges, c, c)
    np.testing.assert_allclose(a.log_z, b.log_z, atol=1e-12)
    np.testing.assert_allclose(a.edge_marginals, b.edge_marginals, atol=1e-12)
    for k in np.ndindex(2, 3):
        lz, node, _, _, _ = brute_force(g, s_n[k], per_edge)
        assert abs(a.log_z[k] - lz) < 1e-10
        np.testing.assert_allclose(a.node_marginals[k], node, atol=1e-10)
    la, gna, gea = es.loss_and_grad(g, s_n, shared, y)
    lb, gnb, geb = es.loss_and_grad(g, s_n, per_edge, y)
    assert gea.shape == shared.shape and geb.shape == per_edge.shape
    np.testing.assert_allclose(la, lb, atol=1e-12)
    np.testing.assert_allclose(gna, gnb, atol=1e-12)
    np.testing.assert_allclose(gea[0], geb.sum(axis=0), atol=1e-10)
    # Node scores shared by the batch: the gradient is summed over items.
    lc, gnc, gec = es.loss_and_grad(g, s_n[0, 0], per_edge[None, None], y)
    assert gnc.shape == (6, c) and gec.shape == (1, 1, g.num_edges, c, c)
    ld, gnd, ged = es.loss_and_grad(g, np.broadcast_to(s_n[0, 0], s_n.shape), per_edge, y)
    np.testing.assert_allclose(lc, ld, atol=1e-12)
    np.testing.assert_allclose(gnc, gnd.sum(axis=(0, 1)), atol=1e-10)
    # Partially broadcast batch axes (2, 1) against (2, 3).
    s_e_b = rng.normal(size=(2, 1, g.num_edges, c, c))
    le, gne, gee = es.loss_and_grad(g, s_n, s_e_b, y)
    lf, gnf, gef = es.loss_and_grad(g, s_n, np.broadcast_to(s_e_b, (2, 3, g.num_edges, c, c)), y)
    np.testing.assert_allclose(le, lf, atol=1e-12)
    assert gee.shape == s_e_b.shape
    np.testing.assert_allclose(gee, gef.sum(axis=1, keepdims=True), atol=1e-10)


def test_two_dimensional_edge_table_is_shared():
    g = es.Graph.chain(4)
    rng = np.random.default_rng(3)
    s_n, t = rng.normal(size=(4, 3)), rng.normal(size=(3, 3))
    a = es.infer(g, s_n, t)
    b = es.infer(g, s_n, np.broadcast_to(t, (3, 3, 3)))
    np.testing.assert_allclose(a.log_z, b.log_z, atol=1e-12)
    _, _, ge = es.loss_and_grad(g, s_n, t, [0, 1, 2, 0])
    assert ge.shape == (3, 3)


def test_noncontiguous_inputs_give_the_same_answer():
    rng = np.random.default_rng(4)
    g = es.Graph.tree([-1, 0, 0, 1, 1, 2])
    c = 4
    big_n = rng.normal(size=(3, 6, 2 * c))
    big_e = rng.normal(size=(g.num_edges, c, c, 2)).transpose(0, 2, 1, 3)
    s_n = big_n[:, :, ::2]  # strided view
    s_e = big_e[..., 0]  # transposed, strided
    assert not s_n.flags.c_contiguous and not s_e.flags.c_contiguous
    a = es.infer(g, s_n, s_e)
    b = es.infer(g, np.ascontiguousarray(s_n), np.ascontiguousarray(s_e))
    np.testing.assert_array_equal(a.log_z, b.log_z)
    np.testing.assert_array_equal(a.edge_marginals, b.edge_marginals)
    for k in range(3):
        lz, node, edge, _, _ = brute_force(g, s_n[k], s_e)
        assert abs(a.log_z[k] - lz) < 1e-10
        np.testing.assert_allclose(a.edge_marginals[k], edge, atol=1e-10)


def test_mixed_precision_promotes_to_float64():
    g = es.Graph.chain(3)
    r = es.infer(g, np.zeros((3, 2), np.float32), np.zeros((2, 2, 2), np.float64))
    assert r.log_z.dtype == np.float64
    assert abs(float(r.log_z) - 3 * np.log(2)) < 1e-12
